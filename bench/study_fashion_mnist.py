"""CARE vs BYOL on real Fashion-MNIST: pretrain, probe, compare (docs/results.md).

    python bench/study_fashion_mnist.py            # the full study (~85 min on 2 cores)
    python bench/study_fashion_mnist.py --quick    # smoke run of every stage (1-2 min)
    python bench/study_fashion_mnist.py plot       # redraw the figures from existing runs

The study runs the repository's command lines as subprocesses, each pinned to
one CPU core (`taskset`, `TF_NUM_INTRAOP_THREADS=1`, `TF_NUM_INTEROP_THREADS=1`),
two at a time from a queue:

1. `python -m care_tf.train` with configs/study_care.yaml and configs/study_byol.yaml
   (same model, data, budget and seed; only the T-stream differs), concurrently,
   for each pretraining seed (`--pretrain_seeds`, default 0 1; seed k > 0 in
   RUNS/care_seedk and RUNS/byol_seedk);
2. two baselines with the same backbone (built from the same config): a random
   initialisation (no training) and a supervised run (cross-entropy on labels,
   random resized crop + flip), both written as `backbone.keras` in a model_dir
   by this script's `random` and `supervised` modes;
3. for each model: `python -m care_tf.evaluate knn` (k=200, T=0.1, the
   full 60k training set as memory bank, 10k test queries) and
   `python -m care_tf.evaluate linear --extract_features` over several seeds;
4. `python -m care_tf.evaluate attention` (BYOL, CARE, supervised columns; seed 0).

Then it draws the loss and accuracy curves (PNG) from the runs' TensorBoard
scalars and metrics.csv, writes `RUNS/results.json` (figures, commands, wall
and CPU seconds of every subprocess; also appended to RUNS/logs/jobs.jsonl as
each job ends) and prints one JSON line of figures. Completed stages are skipped
when the study is rerun, so an interrupted study can be continued with the same
command.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
CONFIGS = {"care": "configs/study_care.yaml", "byol": "configs/study_byol.yaml"}
MODELS = ("care", "byol", "random", "supervised")
LABELS = {"care": "CARE", "byol": "BYOL", "random": "random init", "supervised": "supervised"}
COLOURS = {"care": "tab:red", "byol": "tab:blue", "random": "tab:gray", "supervised": "tab:green"}
LOSS_KEYS = ("loss", "loss_c", "loss_t", "loss_att")
SSL = ("care", "byol")


def run_dir(runs: str, model: str, pretrain_seed: int = 0) -> str:
    """Model directory of `model` pretrained with `pretrain_seed` (seed 0: `runs/model`)."""
    return os.path.join(runs, model if pretrain_seed == 0 else f"{model}_seed{pretrain_seed}")


def seed_dirs(runs: str, model: str) -> list[tuple[int, str]]:
    """[(pretraining seed, directory)] of the existing runs of `model`, seed 0 first."""
    out = [(0, run_dir(runs, model))] if os.path.isdir(run_dir(runs, model)) else []
    if model in SSL:
        for d in glob.glob(os.path.join(runs, f"{model}_seed*")):
            tail = d.rsplit("_seed", 1)[1]
            if tail.isdigit():
                out.append((int(tail), d))
    return sorted(out)


# ------------------------------------------------------------------ settings
def settings(args) -> dict:
    """Every knob of the study, full or --quick."""
    if args.quick:
        return {
            "runs": args.runs_dir or "runs/study_quick",
            "figures": args.figures_dir or os.path.join(args.runs_dir or "runs/study_quick", "fig"),
            "train_set": [
                "data.max_examples=256",
                "data.shuffle_buffer=256",
                "schedule.epochs=2",
                "schedule.warmup_epochs=0.5",
                "train.log_every_steps=1",
                "monitor.train_examples=256",
                "monitor.val_examples=256",
            ],
            "sup_epochs": 1,
            "sup_limit": 512,
            "eval_limit": 512,
            "linear_epochs": 2,
            "seeds": (0,),
            "pretrain_seeds": (0, 1),
            "attention_images": 4,
        }
    return {
        "runs": args.runs_dir or "runs/study",
        "figures": args.figures_dir or "docs/results",
        "train_set": [],
        "sup_epochs": args.sup_epochs,
        "sup_limit": None,
        "eval_limit": None,
        "linear_epochs": args.linear_epochs,
        "seeds": tuple(args.seeds),
        "pretrain_seeds": tuple(args.pretrain_seeds),
        "attention_images": 6,
    }


# ---------------------------------------------------------------- job queue
class Job:
    """One subprocess of the study; `done` is the file it leaves when complete."""

    def __init__(self, name: str, argv: list[str], done: str, after: tuple[str, ...] = ()):
        self.name, self.argv, self.done, self.after = name, argv, done, after


def run_job(job: Job, core: int | None, log_dir: str, cwd: str = ROOT) -> dict:
    """Runs `job` on `core`; returns its command, exit status, wall and CPU seconds."""
    env = dict(os.environ)
    env.update(
        TF_NUM_INTRAOP_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
        OMP_NUM_THREADS="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=cwd,  # `care_tf` from `cwd` (the code snapshot), not the editable install
    )
    prefix = ["taskset", "-c", str(core)] if core is not None else []
    log = os.path.join(log_dir, f"{job.name}.log")
    start = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(prefix + job.argv, cwd=cwd, env=env, stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "command": shlex.join(job.argv),
        "core": core,
        "returncode": proc.returncode,
        "wall_s": round(time.time() - start, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "log": log,
    }


def run_queue(
    jobs: list[Job], cores: list[int | None], log_dir: str, cwd: str = ROOT
) -> dict[str, dict]:
    """Runs `jobs` in order, one per core at a time, each after the jobs it needs.

    A job whose `done` file exists is skipped; a failed job fails the jobs after it.
    """
    records: dict[str, dict] = {}
    lock = threading.Condition()
    pending = list(jobs)
    failed: set[str] = set()
    finished: set[str] = set()
    for job in jobs:
        if os.path.exists(os.path.join(ROOT, job.done)):
            records[job.name] = {"command": shlex.join(job.argv), "skipped": "already done"}
            finished.add(job.name)
    pending = [j for j in jobs if j.name not in finished]
    names = {j.name for j in jobs}

    def next_job() -> Job | None:
        with lock:
            while True:
                for job in pending:
                    deps = [d for d in job.after if d in names]
                    if any(d in failed for d in deps):
                        pending.remove(job)
                        failed.add(job.name)
                        records[job.name] = {"command": shlex.join(job.argv), "skipped": "deps"}
                        lock.notify_all()
                        break
                    if all(d in finished for d in deps):
                        pending.remove(job)
                        if os.path.exists(os.path.join(ROOT, job.done)):  # done meanwhile
                            records[job.name] = {
                                "command": shlex.join(job.argv),
                                "skipped": "already done",
                            }
                            finished.add(job.name)
                            lock.notify_all()
                            break
                        return job
                else:
                    if not pending:
                        return None
                    lock.wait()

    def worker(core):
        while (job := next_job()) is not None:
            print(f"[{time.strftime('%H:%M:%S')}] core {core}: {job.name}", flush=True)
            rec = run_job(job, core, log_dir, cwd)
            ok = rec["returncode"] == 0
            print(
                f"[{time.strftime('%H:%M:%S')}] core {core}: {job.name} "
                f"{'done' if ok else 'FAILED (see ' + rec['log'] + ')'} "
                f"wall {rec['wall_s']:.0f} s, cpu {rec['cpu_s']:.0f} s",
                flush=True,
            )
            with lock:
                records[job.name] = rec
                with open(os.path.join(log_dir, "jobs.jsonl"), "a") as f:
                    f.write(json.dumps({"job": job.name, **rec}) + "\n")
                (finished if ok else failed).add(job.name)
                lock.notify_all()

    threads = [threading.Thread(target=worker, args=(c,)) for c in cores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def study_jobs(s: dict, args) -> list[Job]:
    """The study's subprocesses in queue order: every pretraining run first, then the
    baselines, the probes of the compared pair, the attention grid, the other probes."""
    runs = s["runs"]
    me = os.path.relpath(os.path.abspath(__file__), ROOT)
    jobs = []
    train_job = {}
    for ps in s["pretrain_seeds"]:
        for m in SSL:
            d = run_dir(runs, m, ps)
            name = "train_" + os.path.basename(d)
            train_job[(m, ps)] = name
            argv = [PY, "-m", "care_tf.train", "--config", CONFIGS[m], "--model_dir", d]
            argv += ["--no_progress"] + [a for kv in s["train_set"] for a in ("--set", kv)]
            if ps:
                argv += ["--set", f"train.seed={ps}"]
            if glob.glob(os.path.join(ROOT, d, "checkpoints", "*.index")):
                argv.append("--resume")  # continue an interrupted run
            jobs.append(Job(name, argv, os.path.join(d, "backbone.keras")))
    d = run_dir(runs, "random")
    train_job[("random", 0)] = "random_init"
    jobs.append(
        Job(
            "random_init",
            [PY, me, "random", "--model_dir", d, "--seed", "0"],
            os.path.join(d, "backbone.keras"),
        )
    )
    d = run_dir(runs, "supervised")
    train_job[("supervised", 0)] = "train_supervised"
    argv = [PY, me, "supervised", "--model_dir", d, "--sup_epochs", str(s["sup_epochs"])]
    if s["sup_limit"]:
        argv += ["--limit", str(s["sup_limit"])]
    jobs.append(Job("train_supervised", argv, os.path.join(d, "backbone.keras")))

    limit = ["--limit", str(s["eval_limit"])] if s["eval_limit"] else []

    def probes(m: str, ps: int, probe_seeds, knn: bool) -> None:
        d = run_dir(runs, m, ps)
        tag = os.path.basename(d)
        ev = ["--model_dir", d, "--dataset", "fashion_mnist", "--quiet"] + limit
        after = (train_job[(m, ps)],)
        if knn:
            argv = [PY, "-m", "care_tf.evaluate", "knn", *ev, "--k", "200"]
            knn_json = os.path.join(d, "eval", "knn.json")
            argv += ["--temperature", "0.1", "--out", knn_json]
            jobs.append(Job(f"knn_{tag}", argv, knn_json, after))
        for seed in probe_seeds:
            out = os.path.join(d, "eval", f"linear_seed{seed}.json")
            argv = [PY, "-m", "care_tf.evaluate", "linear", *ev, "--extract_features"]
            argv += ["--epochs", str(s["linear_epochs"]), "--seed", str(seed), "--out", out]
            jobs.append(Job(f"linear_{tag}_seed{seed}", argv, out, after))

    first, rest = s["seeds"][:1], s["seeds"][1:]
    for ps in s["pretrain_seeds"]:
        for m in SSL:
            probes(m, ps, first, knn=True)
    # Written into the runs directory (the figures folder may hold an earlier study's
    # grid, which must not mark this study's as done); copied to the figures by `main`.
    out = os.path.join(runs, "attention.png")
    argv = [PY, "-m", "care_tf.evaluate", "attention", "--dataset", "fashion_mnist"]
    for m in ("byol", "care", "supervised"):
        argv += ["--model_dir", run_dir(runs, m), "--name", LABELS[m]]
    argv += ["--num_images", str(s["attention_images"]), "--out", out]
    after = ("train_care", "train_byol", "train_supervised")
    jobs.append(Job("attention", argv, out, after=after))
    for m in ("supervised", "random"):
        probes(m, 0, first, knn=True)
    # Extra probe seeds (the probe's own noise) only where the comparison needs them.
    for ps in s["pretrain_seeds"]:
        for m in SSL:
            probes(m, ps, rest, knn=False)
    return jobs


def snapshot_code(commit: str = "HEAD") -> tuple[str, dict]:
    """A frozen copy of `care_tf` at `commit`, for the study's subprocesses.

    Others edit the working tree while the study runs, so every subprocess
    imports `care_tf` from `git archive COMMIT care_tf`; the study's own files
    (this script, configs/study_*.yaml) are copied from the working tree, and
    `runs`, `docs` link back to the repository, so relative paths stay valid.

    Returns:
        (directory, {"commit", "care_tf_modified_in_worktree"}).
    """
    sha = subprocess.check_output(["git", "rev-parse", commit], cwd=ROOT, text=True).strip()
    dirty = subprocess.run(["git", "diff", "--quiet", sha, "--", "care_tf"], cwd=ROOT).returncode
    code = os.path.join("/tmp", f"care_tf_study_{sha[:12]}")
    if not os.path.isdir(os.path.join(code, "care_tf")):
        os.makedirs(code, exist_ok=True)
        archive = subprocess.check_output(["git", "archive", sha, "care_tf"], cwd=ROOT)
        subprocess.run(["tar", "-x", "-C", code], input=archive, check=True)
    for rel in (os.path.relpath(os.path.abspath(__file__), ROOT), *CONFIGS.values()):
        os.makedirs(os.path.join(code, os.path.dirname(rel)), exist_ok=True)
        shutil.copy(os.path.join(ROOT, rel), os.path.join(code, rel))
    for link in ("runs", "docs"):
        if not os.path.lexists(os.path.join(code, link)):
            os.symlink(os.path.join(ROOT, link), os.path.join(code, link))
    return code, {"commit": sha, "care_tf_modified_in_worktree": bool(dirty)}


# ----------------------------------------------------------------- baselines
def study_backbone(config_path: str, overrides: list[str] | None = None):
    """A fresh backbone exactly as `care_tf.train` builds it for `config_path`."""
    from care_tf import create_backbone
    from care_tf.train.config import load_config

    m = load_config(os.path.join(ROOT, config_path), overrides or []).model
    kwargs = dict(m.backbone_kwargs)
    if m.base_channels is not None:
        kwargs["base_channels"] = m.base_channels
    stem = m.stem or ("cifar" if m.image_size <= 64 else "imagenet")
    return create_backbone(
        m.backbone,
        image_shape=(m.image_size, m.image_size, 3),
        stem=stem,
        sync_bn=m.sync_bn,
        **kwargs,
    )


def make_random(args) -> None:
    """Saves an untrained backbone (same architecture and seed as the study)."""
    import keras

    keras.utils.set_random_seed(args.seed)
    backbone = study_backbone(CONFIGS["care"])
    os.makedirs(args.model_dir, exist_ok=True)
    backbone.save(os.path.join(args.model_dir, "backbone.keras"))
    print(f"random-init backbone ({backbone.count_params()} weights): {args.model_dir}")


def train_supervised(args) -> None:
    """Backbone + Dense(10) trained with cross-entropy; saves backbone.keras and metrics.csv.

    SGD momentum 0.9, lr 0.05 (batch 128) with 10% linear warm-up then cosine to 0,
    Keras weight decay 1e-4; augmentation = the linear probe's training pipeline
    (random resized crop (0.08, 1) + horizontal flip, 32 px).
    """
    import keras
    import tensorflow as tf

    from care_tf.data import load_source, make_eval_dataset

    keras.utils.set_random_seed(args.seed)
    backbone = study_backbone(CONFIGS["care"])
    size = backbone.input_shape[1]
    source = load_source("fashion_mnist", "train")
    n = min(args.limit or source.num_examples, source.num_examples)
    train = make_eval_dataset(
        source,
        split="train",
        train=True,
        image_size=size,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    if args.limit:
        train = train.unbatch().take(n).batch(args.batch_size, drop_remainder=True)
    test = make_eval_dataset(
        "fashion_mnist", split="test", train=False, image_size=size, batch_size=256
    )
    if args.limit:
        test = test.unbatch().take(args.limit).batch(256)

    steps_per_epoch = n // args.batch_size
    total = max(1, int(args.sup_epochs * steps_per_epoch))
    warmup = max(1, total // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        1e-6, decay_steps=total - warmup, warmup_target=args.lr, warmup_steps=warmup
    )
    inputs = keras.Input((size, size, 3))
    logits = keras.layers.Dense(10, name="classifier")(backbone(inputs)["pooled"])
    model = keras.Model(inputs, logits)
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    os.makedirs(args.model_dir, exist_ok=True)
    start = time.time()
    history = model.fit(
        train.repeat(),
        epochs=max(1, round(args.sup_epochs)),
        steps_per_epoch=total // max(1, round(args.sup_epochs)),
        validation_data=test,
        callbacks=[keras.callbacks.CSVLogger(os.path.join(args.model_dir, "metrics.csv"))],
        verbose=2,
    )
    backbone.save(os.path.join(args.model_dir, "backbone.keras"))
    state = {
        "steps": total,
        "epochs": args.sup_epochs,
        "batch_size": args.batch_size,
        "peak_lr": args.lr,
        "seed": args.seed,
        "train_seconds": round(time.time() - start, 1),
        "test_top1_own_head": float(history.history["val_accuracy"][-1]),
        "tf_version": tf.__version__,
    }
    with open(os.path.join(args.model_dir, "train_state.json"), "w") as f:
        json.dump(state, f, indent=2)
    print(json.dumps(state))


# ---------------------------------------------------------------- curves
def read_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """`{tag: [(step, value), ...]}` from the TensorBoard event files in `log_dir`."""
    import tensorflow as tf

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for raw in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            for v in event.summary.value:
                value = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
                out.setdefault(v.tag, []).append((int(event.step), value))
    return {k: sorted(dict(v).items()) for k, v in out.items()}


def interval_means(points: list[tuple[int, float]], steps_per_epoch: int):
    """Per-interval means from epoch-running means.

    The training CLI logs, at step s, the mean of the loss over the steps of the
    current epoch so far (n = s - epoch * steps_per_epoch of them). Between two
    logged steps s1 < s2 of one epoch the mean over steps (s1, s2] is
    (n2 m2 - n1 m1) / (n2 - n1); the first point of an epoch is its own mean.

    Returns:
        list of (last step of the interval, mean over the interval).
    """
    out = []
    prev_epoch, prev_n, prev_m = None, 0, 0.0
    for step, mean in points:
        epoch = (step - 1) // steps_per_epoch
        n = step - epoch * steps_per_epoch
        if epoch != prev_epoch:
            prev_n, prev_m = 0, 0.0
        if n > prev_n:
            out.append((step, (n * mean - prev_n * prev_m) / (n - prev_n)))
        prev_epoch, prev_n, prev_m = epoch, n, mean
    return out


def read_csv(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def online_knn(model_dir: str) -> list[tuple[int, float]]:
    """(epoch, online kNN top-1 %) of a training run.

    From metrics.csv when it has `knn_top1`, else from the monitor's own
    TensorBoard scalars (`logs/monitor`, `epoch_knn_top1` at 0-based epochs):
    the training CLI's CSV row misses the monitor figures (see docs/results.md).
    """
    rows = read_csv(os.path.join(model_dir, "metrics.csv"))
    pts = [(_float(r.get("epoch")), _float(r.get("knn_top1"))) for r in rows]
    pts = [(int(e), 100 * a) for e, a in pts if e is not None and a is not None]
    if pts:
        return pts
    scalars = read_scalars(os.path.join(model_dir, "logs", "monitor"))
    return [(e + 1, 100 * a) for e, a in scalars.get("epoch_knn_top1", [])]


def _float(x) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def plot_curves(runs: str, figures: str) -> dict[str, str]:
    """loss_curves.png and accuracy.png from the runs' logs; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import yaml

    os.makedirs(figures, exist_ok=True)
    paths = {}
    curves = {}  # (model, pretraining seed) -> loss curves
    for m in SSL:
        for ps, d in seed_dirs(runs, m):
            cfg_path = os.path.join(d, "config.yaml")
            if not os.path.isfile(cfg_path):
                continue
            with open(cfg_path) as f:
                spe = yaml.safe_load(f)["derived"]["steps_per_epoch"]
            scalars = read_scalars(os.path.join(d, "logs", "train"))
            c = {k: interval_means(scalars.get(f"train/{k}", []), spe) for k in LOSS_KEYS}
            curves[(m, ps)] = c
    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for (m, ps), c in curves.items():
            steps, vals = zip(*c["loss_c"], strict=True) if c["loss_c"] else ((), ())
            style = {"lw": 1} if ps == 0 else {"lw": 0.8, "ls": "--", "alpha": 0.6}
            label = f"{LABELS[m]} $L_c$" + (f" (seed {ps})" if ps else "")
            axes[0].plot(steps, vals, color=COLOURS[m], label=label, **style)
        axes[0].set(xlabel="step", ylabel="$L_c$ (C-stream BYOL loss)", title="C-stream loss")
        if ("care", 0) in curves:
            c = curves[("care", 0)]
            for k, style, lab in (
                ("loss", "-", "$L$ (total)"),
                ("loss_c", "--", "$L_c$"),
                ("loss_t", ":", "$L_t$"),
            ):
                if c[k]:
                    s_, v_ = zip(*c[k], strict=True)
                    axes[1].plot(s_, v_, style, color="tab:red", lw=1, label=lab)
            if c["loss_att"]:
                s_, v_ = zip(*c["loss_att"], strict=True)
                axes[1].plot(
                    s_, [100 * v for v in v_], "-.", color="k", lw=1, label=r"$100\,L_{att}$"
                )
            axes[1].set(xlabel="step", title="CARE loss terms (seed 0)")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("Fashion-MNIST pretraining (means over 10-step intervals)", fontsize=10)
        fig.tight_layout()
        paths["loss_curves"] = os.path.join(figures, "loss_curves.png")
        fig.savefig(paths["loss_curves"], dpi=90)
        plt.close(fig)

    # Accuracy: per-class kNN of the four models (online kNN curves when a run has more
    # than one monitor point); final probes of the four models.
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    online = {(m, ps): online_knn(d) for m in SSL for ps, d in seed_dirs(runs, m)}
    if online and all(len(p) > 1 for p in online.values()):
        for (m, ps), pts in online.items():
            style = "o-" if ps == 0 else "s--"
            label = LABELS[m] + (f" (seed {ps})" if ps else "")
            axes[0].plot(*zip(*pts, strict=True), style, color=COLOURS[m], label=label)
        axes[0].set(
            xlabel="epoch",
            ylabel="top-1 (%)",
            title="Online kNN during pretraining\n(2048-image bank, 1000 test images)",
        )
    else:
        names = None
        for m in MODELS:
            knn = _load_json(os.path.join(runs, m, "eval", "knn.json"))
            if not knn:
                continue
            names = knn["class_names"]
            acc = [100 * knn["per_class_accuracy"][c] for c in names]
            axes[0].plot(range(len(names)), acc, "o-", ms=3, color=COLOURS[m], label=LABELS[m])
        if names:
            short = [n.split("/")[0] for n in names]
            axes[0].set_xticks(range(len(names)), short, rotation=45, fontsize=7)
        axes[0].set(ylabel="top-1 (%)", title="kNN top-1 per class (10k test images)")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    table = collect(runs)
    xs = range(len(MODELS))
    width = 0.38
    for i, (key, lab) in enumerate((("knn_top1", "kNN top-1"), ("linear_top1", "linear top-1"))):
        vals = [table.get(m, {}).get(key) for m in MODELS]
        errs = [table.get(m, {}).get(f"{key}_range") for m in MODELS]
        ys = [100 * v if v is not None else 0 for v in vals]
        lower = [
            100 * (v - e[0]) if (v is not None and e) else 0
            for v, e in zip(vals, errs, strict=True)
        ]
        upper = [
            100 * (e[1] - v) if (v is not None and e) else 0
            for v, e in zip(vals, errs, strict=True)
        ]
        bars = axes[1].bar(
            [x + (i - 0.5) * width for x in xs],
            ys,
            width,
            yerr=[lower, upper],
            label=lab,
            color=["#888", "#444"][i],
            capsize=3,
        )
        for b, y in zip(bars, ys, strict=True):
            if y:
                axes[1].text(
                    b.get_x() + b.get_width() / 2,
                    y + 0.5,
                    f"{y:.1f}",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    axes[1].set_xticks(list(xs), [LABELS[m] for m in MODELS])
    lows = [
        100 * table[m][k]
        for m in table
        for k in ("knn_top1", "linear_top1")
        if table[m].get(k) is not None
    ]
    axes[1].set_ylim(max(0, min(lows, default=0) - 10), 100)
    axes[1].set(ylabel="top-1 (%)", title="Final probes (full 10k test set)")
    axes[1].legend(fontsize=8, loc="lower right")
    axes[1].grid(alpha=0.3, axis="y")
    fig.tight_layout()
    paths["accuracy"] = os.path.join(figures, "accuracy.png")
    fig.savefig(paths["accuracy"], dpi=90)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------- results
def _load_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _summarise(prefix: str, results: dict) -> dict:
    """`{prefix}_top1/_top5` means, `_top1_range` and `_top1_seeds` of {run key: result}."""
    top1 = [j["top1"] for j in results.values()]
    return {
        f"{prefix}_top1": sum(top1) / len(top1),
        f"{prefix}_top5": sum(j["top5"] for j in results.values()) / len(results),
        f"{prefix}_top1_range": (min(top1), max(top1)),
        f"{prefix}_top1_seeds": {k: j["top1"] for k, j in results.items()},
    }


def collect(runs: str) -> dict[str, dict]:
    """Per model: kNN and linear top-1/top-5, means over pretraining and probe seeds.

    kNN: mean over pretraining seeds (`knn_top1_seeds`: {pretraining seed: top-1}).
    Linear: mean over every (pretraining seed, probe seed) pair
    (`linear_top1_seeds`: {"pretraining seed/probe seed": top-1}), with its range.
    """
    table: dict[str, dict] = {}
    for m in MODELS:
        knn: dict[int, dict] = {}
        lin: dict[str, dict] = {}
        for ps, d in seed_dirs(runs, m):
            if j := _load_json(os.path.join(d, "eval", "knn.json")):
                knn[ps] = j
            for p in sorted(glob.glob(os.path.join(d, "eval", "linear_seed*.json"))):
                if j := _load_json(p):
                    lin[f"{ps}/{j['config']['seed']}"] = j
        row: dict = {}
        if knn:
            row.update(_summarise("knn", knn), knn_bank=next(iter(knn.values()))["num_train"])
        if lin:
            epochs = next(iter(lin.values()))["config"]["epochs"]
            row.update(_summarise("linear", lin), linear_epochs=epochs)
        state = _load_json(os.path.join(run_dir(runs, m), "train_state.json"))
        if state and "test_top1_own_head" in state:
            row["own_head_top1"] = state["test_top1_own_head"]
        if row:
            table[m] = row
    return table


def markdown_table(table: dict[str, dict]) -> str:
    """Results table; brackets list the single runs (pretraining seeds split by " / ")."""

    def pct(x):
        return f"{100 * x:.2f}" if x is not None else "n/a"

    def by_pretraining_seed(seeds: dict[str, float]) -> str:
        groups: dict[str, list[str]] = {}
        for key, v in sorted(seeds.items(), key=lambda kv: tuple(map(int, kv[0].split("/")))):
            groups.setdefault(key.split("/")[0], []).append(pct(v))
        return " / ".join(", ".join(g) for g in groups.values())

    lines = [
        "| model | kNN top-1 (mean; per pretraining seed) | kNN top-5 "
        "| linear top-1 (mean; per probe seed) | linear top-5 |",
        "|---|---|---|---|---|",
    ]
    for m in MODELS:
        r = table.get(m, {})
        knn = pct(r.get("knn_top1"))
        if len(r.get("knn_top1_seeds", {})) > 1:
            knn += " (" + ", ".join(pct(v) for _, v in sorted(r["knn_top1_seeds"].items())) + ")"
        lin = pct(r.get("linear_top1"))
        if r.get("linear_top1_seeds"):
            lin += f" ({by_pretraining_seed(r['linear_top1_seeds'])})"
        lines.append(
            f"| {LABELS[m]} | {knn} | {pct(r.get('knn_top5'))} | {lin} | "
            f"{pct(r.get('linear_top5'))} |"
        )
    return "\n".join(lines)


def earlier_records(runs: str, old_results: dict) -> dict[str, dict]:
    """Timed records of finished jobs from earlier launches: RUNS/logs/jobs.jsonl (written
    as each job ends, so it survives an interrupted driver), else the old results.json."""
    out = {n: r for n, r in (old_results.get("jobs") or {}).items() if "wall_s" in r}
    path = os.path.join(runs, "logs", "jobs.jsonl")
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if rec.get("returncode") == 0:
                    out[rec.pop("job")] = rec
    return out


# ---------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "mode",
        nargs="?",
        default="study",
        choices=("study", "plot", "random", "supervised"),
        help="study (default): everything; plot: figures and table from existing runs; "
        "random / supervised: build one baseline (called by the study)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: tiny budget and limits")
    p.add_argument(
        "--runs_dir", default=None, help="default runs/study (--quick: runs/study_quick)"
    )
    p.add_argument("--figures_dir", default=None, help="PNG folder (default docs/results)")
    p.add_argument("--commit", default="HEAD", help="commit whose care_tf the study runs")
    p.add_argument("--cores", default="0,1", help="CPU cores, one concurrent job each")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="linear-probe seeds")
    p.add_argument(
        "--pretrain_seeds",
        type=int,
        nargs="+",
        default=[0, 1],
        help="pretraining seeds of CARE and BYOL (seed k > 0 runs in RUNS/care_seedk)",
    )
    p.add_argument("--linear_epochs", type=int, default=80, help="linear-probe epochs")
    p.add_argument("--sup_epochs", type=float, default=4, help="supervised baseline epochs")
    # random / supervised modes
    p.add_argument("--model_dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05, help="supervised peak lr")
    p.add_argument("--limit", type=int, default=None, help="supervised: training images")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.mode == "random":
        make_random(args)
        return 0
    if args.mode == "supervised":
        train_supervised(args)
        return 0
    s = settings(args)
    runs = s["runs"]
    os.makedirs(os.path.join(ROOT, runs, "logs"), exist_ok=True)
    records, provenance = {}, {}
    start = time.time()
    if args.mode == "study":
        cores = [int(c) if c != "none" else None for c in args.cores.split(",")]
        jobs = study_jobs(s, args)
        os.makedirs(os.path.join(ROOT, s["figures"]), exist_ok=True)
        code, provenance = snapshot_code(args.commit)
        print(f"care_tf of {provenance['commit']} in {code}", flush=True)
        records = run_queue(jobs, cores, os.path.join(ROOT, runs, "logs"), cwd=code)
    figures = plot_curves(os.path.join(ROOT, runs), os.path.join(ROOT, s["figures"]))
    grid = os.path.join(ROOT, runs, "attention.png")
    if os.path.isfile(grid):
        figures["attention"] = os.path.join(ROOT, s["figures"], "attention.png")
        shutil.copyfile(grid, figures["attention"])
    table = collect(os.path.join(ROOT, runs))
    results = {
        "quick": args.quick,
        "runs": runs,
        "table": table,
        "figures": figures,
        "code": provenance,
        "jobs": records,
        "wall_s": round(time.time() - start, 1),
    }
    path = os.path.join(ROOT, runs, "results.json" if args.mode == "study" else "results_plot.json")
    old = _load_json(path) or {}
    if args.mode == "study":  # keep the timings of earlier, skipped jobs
        for name, rec in earlier_records(os.path.join(ROOT, runs), old).items():
            if records.get(name, {}).get("skipped") == "already done":
                records[name] = rec
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=list)
    print(markdown_table(table), file=sys.stderr)
    failed = [n for n, r in records.items() if r.get("returncode") not in (0, None)]
    summary = {
        m: {k: v for k, v in r.items() if k in ("knn_top1", "linear_top1", "linear_top5")}
        for m, r in table.items()
    }
    summary["failed_jobs"] = failed
    summary["timings"] = {
        n: {"wall_s": r.get("wall_s"), "cpu_s": r.get("cpu_s")} for n, r in records.items()
    }
    print(json.dumps(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
