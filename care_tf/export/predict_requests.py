"""TF Serving PredictRequests (tensorflow-serving-api protos) and their checks."""

from __future__ import annotations

import numpy as np

# Ranks of our serving inputs. The signatures declare unknown rank (a declared one would
# let the graph optimiser drop the in-graph rank check), so a client learns it here.
INPUT_RANKS = {"images": 4, "image_bytes": 1}


def predict_request(signature: str, model_name: str = "care", **inputs):
    """A `PredictRequest` for `signature` with numpy/bytes `inputs` (name -> array)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def check_request(request, signature_def) -> list[str]:
    """Problems of `request` against a SignatureDef (names, dtypes, shapes); [] when fine."""
    problems = []
    wanted = dict(signature_def.inputs)
    given = dict(request.inputs)
    for name in sorted(set(wanted) - set(given)):
        problems.append(f"missing input {name!r}")
    for name in sorted(set(given) - set(wanted)):
        problems.append(f"unknown input {name!r} (signature takes {sorted(wanted)})")
    for name in sorted(set(wanted) & set(given)):
        want, have = wanted[name], given[name]
        if want.dtype != have.dtype:
            problems.append(f"input {name!r}: dtype {have.dtype} but signature wants {want.dtype}")
        want_dims = [d.size for d in want.tensor_shape.dim]
        have_dims = [d.size for d in have.tensor_shape.dim]
        if want.tensor_shape.unknown_rank:  # ours: the rank is checked in the graph
            rank = INPUT_RANKS.get(name)
            if rank is not None and len(have_dims) != rank:
                problems.append(
                    f"input {name!r}: shape {have_dims} but the signature takes rank {rank}"
                )
        elif len(want_dims) != len(have_dims) or any(
            w not in (-1, h) for w, h in zip(want_dims, have_dims, strict=False)
        ):
            problems.append(f"input {name!r}: shape {have_dims} but signature wants {want_dims}")
    return problems


def warmup_image(image_size: int) -> np.ndarray:
    """A (1, H, W, 3) uint8 gradient image, a little larger than the crop."""
    height, width = image_size + 8, image_size + 16
    y = np.linspace(0, 255, height)[:, None]
    x = np.linspace(0, 255, width)[None, :]
    image = np.stack([y + 0 * x, 0 * y + x, (y + x) / 2], axis=-1)
    return image.astype(np.uint8)[None]
