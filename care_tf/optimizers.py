"""The optimizers CARE is trained with, for `model.compile(optimizer=...)`.

Which one:

- `TorchSGD` (the paper's recipe, `optimizer.name: sgd`): SGD with momentum in the
  authors' PyTorch convention, v <- momentum * v + g, w <- w - lr * v. Use it to
  reproduce the paper and for batches up to a few thousand images. Weight decay is
  coupled into the gradient by the model (`CARE(weight_decay=1e-4)`), as PyTorch's
  `SGD(weight_decay=...)` does.
- `keras.optimizers.SGD` keeps the learning rate inside the velocity
  (v <- momentum * v - lr * g, w <- w + v): each gradient keeps the lr of the step
  it was computed at, where TorchSGD applies the current lr to the whole velocity.
  The two agree at a constant lr only; under the warm-up and cosine schedule they
  train differently (docs/results.md measures it), so it is not the paper's
  optimizer and `care_tf.build_experiment` never uses it.
- `LARS` (`optimizer.name: lars`): per-layer trust ratio, for large batches (4096+)
  where SGD's linear learning-rate scaling becomes unstable (BYOL's recipe). It applies
  its own weight decay; leave `CARE(weight_decay=0)`.
"""

from care_tf.train.optimizers import LARS
from care_tf.train.sgd import TorchSGD

__all__ = ["LARS", "TorchSGD"]
