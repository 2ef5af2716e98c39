"""CARE's losses in one place (METHOD.md, "Training step"). Inputs L2-normalised, float32."""

from __future__ import annotations

from keras import ops


def byol_loss(p1, z1, p2, z2):
    """mean_batch[4 - 2 (<p1, z1> + <p2, z2>)]: the symmetric BYOL regression loss.

    p1, p2: online predictions (B, D); z1, z2: target projections of the other view.
    """
    return ops.mean(4.0 - 2.0 * (ops.sum(p1 * z1, axis=-1) + ops.sum(p2 * z2, axis=-1)))


def attention_loss(q1, a1, q2, a2):
    """MSE(q1, sg(a1)) + MSE(q2, sg(a2)), each a mean over batch and dims.

    The stop-gradient makes the T-stream a teacher only: this loss trains the
    C-stream towards the T-stream, never the reverse.
    """
    a1, a2 = ops.stop_gradient(a1), ops.stop_gradient(a2)
    return ops.mean(ops.square(q1 - a1)) + ops.mean(ops.square(q2 - a2))


def target_momentum(step, total_steps: int, base_momentum: float):
    """m = 1 - (1 - m_base) (cos(pi k / K) + 1) / 2: 0.99 at k = 0 rising to 1 at k = K."""
    k = ops.minimum(ops.cast(step, "float32"), float(total_steps))
    progress = k / float(max(total_steps, 1))
    return 1.0 - (1.0 - base_momentum) * (ops.cos(progress * 3.141592653589793) + 1.0) / 2.0
