"""Any TFDS image dataset by name (`tfds:NAME`), e.g. cifar10, imagenet2012.

ImageNet needs a manual download: put ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar in DATA_DIR/downloads/manual/ and run
`tfds build imagenet2012 --data_dir DATA_DIR` once (see docs/data.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from care_tf.data.decode import decode_dataset
from care_tf.data.sources import Source, pipeline_of


@dataclasses.dataclass
class TFDSSource(Source):
    """A prepared TFDS dataset; images are decoded by us (bad records named by tfds_id)."""

    builder: Any = dataclasses.field(default=None, repr=False)
    image_key: str = "image"
    label_key: str | None = "label"

    def as_dataset(self, input_context=None, *, shuffle=False, seed=None, shuffle_buffer=10_000):
        import tensorflow_datasets as tfds

        read_config = tfds.ReadConfig(
            input_context=input_context,  # file-level sharding across input pipelines
            shuffle_seed=seed,
            add_tfds_id=True,
            interleave_cycle_length=16,
        )
        try:
            ds = self.builder.as_dataset(
                split=self.split,
                shuffle_files=shuffle,
                read_config=read_config,
                decoders={self.image_key: tfds.decode.SkipDecoding()},
            )
        except AssertionError as e:  # tfds: "Dataset ...: could not find data in ..."
            raise FileNotFoundError(
                f"TFDS dataset {self.name!r} is not prepared in {self.builder.data_dir}; run "
                "`tfds build NAME --data_dir DATA_DIR` first (ImageNet: see docs/data.md). "
                f"({e})"
            ) from e
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

        def triple(ex):
            label = ex[self.label_key] if self.label_key else tf.constant(-1)
            return ex["tfds_id"], ex[self.image_key], tf.cast(label, tf.int64)

        ds = ds.map(triple, num_parallel_calls=tf.data.AUTOTUNE)
        return decode_dataset(ds, skip_corrupt=self.skip_corrupt)

    def require_prepared(self) -> None:
        """Raises FileNotFoundError (saying how to prepare it) when the dataset has no
        generated splits in its data dir."""
        if not self.builder.info.splits:
            name = self.name.removeprefix("tfds:")
            raise FileNotFoundError(
                f"TFDS dataset {name!r} is not prepared in {self.builder.data_dir} (no splits "
                f"generated there): run `tfds build {name} --data_dir DATA_DIR` once (online; "
                "ImageNet: see docs/data.md), or point the data dir at a prepared copy."
            )

    def segments(self, input_context=None) -> list[tuple[str, int, int]]:
        """(file, first record, records) of this input pipeline's share of the split
        (TFDS's file instructions, which also resolve expressions like "train[:10%]")."""
        self.require_prepared()
        instructions = self.builder.info.splits[self.split].file_instructions
        segments = [
            (
                str(fi.filename),
                int(fi.skip),
                int(fi.take if fi.take >= 0 else fi.examples_in_shard - fi.skip),
            )
            for fi in instructions
        ]
        n, i = pipeline_of(input_context)
        mine = segments[i::n]
        if not mine:
            raise ValueError(
                f"{self.name}: {len(segments)} files cannot be shared among {n} input "
                "pipelines; use fewer workers or a dataset with more shards"
            )
        return mine

    def epoch_length(self, input_context=None):
        return sum(s[2] for s in self.segments(input_context))

    def stream(self, input_context=None, *, seed=0, start=0, window=10_000):
        import tensorflow_datasets as tfds

        from care_tf.data.order import record_positions

        features = self.builder.info.features
        decoders = {self.image_key: tfds.decode.SkipDecoding()}
        _, pipeline = pipeline_of(input_context)

        def parse(k, path, index, record):
            ex = features.deserialize_example(record, decoders=decoders)
            label = ex[self.label_key] if self.label_key else tf.constant(-1, tf.int64)
            name = tf.strings.join([path, "#", tf.strings.as_string(index)])
            return k, name, ex[self.image_key], tf.cast(label, tf.int64)

        ds = record_positions(
            self.segments(input_context),
            seed,
            pipeline,
            start,
            window,
            skip_corrupt=self.skip_corrupt,  # a damaged record: named, or its file cut
        )
        return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def tfds_source(name: str, split: str = "train", data_dir: str | None = None) -> TFDSSource:
    """Opens a prepared TFDS dataset (never downloads: run `tfds build NAME` first)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # unknown name: tfds lists close matches in its message
        raise ValueError(f"Unknown TFDS dataset {name!r}: {e}") from e
    info = builder.info
    image_keys = [k for k, f in info.features.items() if isinstance(f, tfds.features.Image)]
    if not image_keys:
        raise ValueError(f"TFDS dataset {name!r} has no image feature: {info.features}")
    image_key = "image" if "image" in image_keys else image_keys[0]
    label_key = (
        "label"
        if "label" in info.features.keys()
        and isinstance(info.features["label"], tfds.features.ClassLabel)
        else None
    )
    known = list(info.splits.keys()) if info.splits else []
    num_examples = None
    if known:  # a prepared dataset; split expressions like "train[:10%]" are resolved
        try:
            num_examples = int(info.splits[split].num_examples)
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(
                f"TFDS dataset {name!r} has no split {split!r}; splits: {known}"
            ) from e
    files = []
    if num_examples is not None:
        try:  # the split's shard files (TFDS shards them across input pipelines itself)
            files = [str(f) for f in info.splits[split].filepaths]
        except Exception:  # noqa: BLE001 - older TFDS or split expressions
            files = []
    label = info.features[label_key] if label_key else None
    return TFDSSource(
        name=f"tfds:{name}",
        split=split,
        files=files,
        num_examples=num_examples,
        num_classes=label.num_classes if label else None,
        class_names=list(label.names) if label else None,
        builder=builder,
        image_key=image_key,
        label_key=label_key,
    )
