"""Query a CARE backbone served by TF Serving over gRPC (tensorflow-serving-api).

    python export/grpc_client.py cat.jpg dog.png                 # serve_image_bytes
    python export/grpc_client.py --pixels cat.jpg                # serve_uint8
    python export/grpc_client.py --server host:8500 --model care --version 1 cat.jpg

Needs `grpcio`, `tensorflow-serving-api` (install it with `--no-deps` next to
tensorflow-cpu, as the Makefile does) and TensorFlow for the tensor protos.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def build_request(paths: list[str], model: str, pixels: bool, version: int | None = None):
    """A PredictRequest for `serve_image_bytes` (encoded files) or `serve_uint8` (pixels)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if pixels:
        from PIL import Image

        images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
        request.model_spec.signature_name = "serve_uint8"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.uint8))
    else:
        encoded = []
        for path in paths:
            with open(path, "rb") as f:
                encoded.append(f.read())
        request.model_spec.signature_name = "serve_image_bytes"
        request.inputs["image_bytes"].CopyFrom(
            tf.make_tensor_proto(encoded, dtype=tf.string, shape=[len(encoded)])
        )
    return request


def predict(server: str, request, timeout: float = 30.0) -> np.ndarray:
    """Sends the request; returns (N, C) embeddings."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout)
        except grpc.RpcError as err:  # e.g. INVALID_ARGUMENT for bytes that are not an image
            if err.code() == grpc.StatusCode.UNAVAILABLE:  # nobody listening, unknown host
                print(
                    f"error: cannot reach TF Serving at {server} ({err.details()}): start the "
                    "server or check --server.",
                    file=sys.stderr,
                )
                raise SystemExit(2) from None
            raise SystemExit(f"TF Serving: {err.code().name}: {err.details()}") from None
    return tf.make_ndarray(response.outputs["embedding"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="JPEG/PNG files")
    parser.add_argument("--server", default="localhost:8500")
    parser.add_argument("--model", default="care")
    parser.add_argument("--version", type=int, help="a version (default: the newest)")
    parser.add_argument("--pixels", action="store_true", help="send decoded pixels (serve_uint8)")
    parser.add_argument("--out", help="save the embeddings to this .npy file")
    args = parser.parse_args(argv)
    request = build_request(args.images, args.model, args.pixels, args.version)
    embeddings = predict(args.server, request)
    for path, emb in zip(args.images, embeddings, strict=True):
        print(f"{path}: |e|={np.linalg.norm(emb):.4f} e[:4]={np.round(emb[:4], 4).tolist()}")
    if args.out:
        np.save(args.out, embeddings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
