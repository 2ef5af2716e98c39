"""CARE's losses in one place (docs/method.md, "Losses"). Inputs L2-normalised, float32."""

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


def authors_logged_losses(loss_c, loss_t, loss_att, k1, t1, k2, t2, lambda_att: float) -> dict:
    """The totals the authors' code logs, to hold our logs against theirs (not optimised).

    Their logged attention term adds the target's C- vs T-stream distance:
    `loss_att_authors` = lambda (MSE(q1,a1) + MSE(q2,a2) + MSE(k1,t1) + MSE(k2,t2)),
    and `loss_authors` = L_c + L_t + loss_att_authors. The extra target terms
    carry no gradient (k, t are target outputs); the optimised loss is
    L_c + L_t + lambda L_att.

    Args:
        loss_c, loss_t, loss_att: scalars L_c, L_t, L_att (= MSE(q1,a1) + MSE(q2,a2)).
        k1, t1: target C- and T-stream projections of view 2 (B, D); k2, t2: of view 1.
        lambda_att: float. The attention-loss weight.
    """
    target_att = ops.stop_gradient(ops.mean(ops.square(k1 - t1)) + ops.mean(ops.square(k2 - t2)))
    loss_att_authors = lambda_att * (loss_att + target_att)
    return {
        "loss_att_authors": loss_att_authors,
        "loss_authors": loss_c + loss_t + loss_att_authors,
    }


def target_momentum(step, total_steps: int, base_momentum: float):
    """m = 1 - (1 - m_base) (cos(pi k / K) + 1) / 2: 0.99 at k = 0 rising to 1 at k = K."""
    k = ops.minimum(ops.cast(step, "float32"), float(total_steps))
    progress = k / float(max(total_steps, 1))
    return 1.0 - (1.0 - base_momentum) * (ops.cos(progress * 3.141592653589793) + 1.0) / 2.0
