"""The fine-tuning loop the transfer tasks share: Adam with cosine decay over `model.fit`."""

from __future__ import annotations

import keras


def fit_task(
    model: keras.Model,
    train_data,
    *,
    epochs: int,
    steps_per_epoch: int | None,
    learning_rate: float,
    global_clipnorm: float | None = None,
    compile_kwargs: dict | None = None,
    verbose: int | str = 0,
    callbacks: list | None = None,
    run_eagerly: bool = False,
) -> dict:
    """Compiles `model` with Adam (lr cosine-decayed from `learning_rate` to 0 over the run)
    and fits it on `train_data`.

    Args:
        model: a keras-hub task (detector, segmenter).
        train_data: batched tf.data dataset of (inputs, targets).
        epochs: int.
        steps_per_epoch: int or None. None: the dataset's length; given: the dataset is
            repeated.
        learning_rate: float. Peak learning rate.
        global_clipnorm: float or None. Clip gradients to this global norm.
        compile_kwargs: extra `compile` arguments (loss, metrics).
        verbose, callbacks: as `model.fit`.
        run_eagerly: bool. No graph tracing (quicker for a step or two, e.g. in tests).

    Returns:
        The per-epoch history, `{name: [float, ...]}`.

    Raises:
        ValueError: the dataset's length is unknown and `steps_per_epoch` is None.
    """
    steps = steps_per_epoch or int(train_data.cardinality())
    if steps <= 0:
        raise ValueError("Cannot tell the training set's length: pass steps_per_epoch.")
    if steps_per_epoch:
        train_data = train_data.repeat()
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, steps * epochs))
    model.compile(
        optimizer=keras.optimizers.Adam(schedule, global_clipnorm=global_clipnorm),
        run_eagerly=run_eagerly,
        **(compile_kwargs or {}),
    )
    history = model.fit(
        train_data,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        verbose=verbose,
        callbacks=callbacks,
    )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}
