"""Query a CARE backbone served by TF Serving over REST (JSON).

    python export/rest_client.py cat.jpg dog.png                     # serve_image_bytes (base64)
    python export/rest_client.py --pixels cat.jpg                    # serve_uint8 (JSON arrays)
    python export/rest_client.py --url http://host:8501 --model care --version 1 cat.jpg
    python export/rest_client.py --dry_run cat.jpg                   # print the request body

Prints one line per image: its name and embedding norm and first values; `--out
FILE.npy` saves the (N, C) embeddings. Needs only numpy (and Pillow for --pixels).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from typing import NoReturn

import numpy as np


def fail(message: str) -> NoReturn:
    """Stops the client with one `error:` line (exit status 2)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def bytes_body(paths: list[str]) -> dict:
    """Request body for `serve_image_bytes`: each file base64-encoded as {"b64": ...}."""
    instances = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as err:
            fail(f"cannot read image {path!r} ({err.strerror or err}): give JPEG/PNG files.")
        instances.append({"image_bytes": {"b64": base64.b64encode(data).decode("ascii")}})
    return {"signature_name": "serve_image_bytes", "instances": instances}


def pixels_body(paths: list[str]) -> dict:
    """Request body for `serve_uint8`: decoded RGB pixels (all images must share one size
    in a batch: send images of different sizes in separate requests)."""
    from PIL import Image

    images = []
    for path in paths:
        try:
            images.append(np.asarray(Image.open(path).convert("RGB")))
        except OSError as err:  # missing, unreadable or not an image
            fail(f"cannot read image {path!r} ({err}): give JPEG/PNG files.")
    if len({im.shape for im in images}) > 1:
        fail("--pixels: images of different sizes need separate requests")
    return {"signature_name": "serve_uint8", "inputs": {"images": np.stack(images).tolist()}}


def predict(url: str, model: str, body: dict, version: int | None = None, timeout: float = 30):
    """POSTs `body` to /v1/models/MODEL[/versions/N]:predict; returns (N, C) embeddings."""
    target = f"{url.rstrip('/')}/v1/models/{model}"
    if version is not None:
        target += f"/versions/{version}"
    request = urllib.request.Request(
        target + ":predict",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            result = json.load(response)
    except urllib.error.HTTPError as err:  # TF Serving answers {"error": "..."} (e.g. bad bytes)
        detail = err.read().decode(errors="replace")
        raise SystemExit(f"TF Serving returned HTTP {err.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as err:  # refused, unknown host, timed out
        reason = getattr(err, "reason", None) or err
        fail(f"cannot reach TF Serving at {url} ({reason}): start the server or check --url.")
    return parse_response(result)


def parse_response(result: dict) -> np.ndarray:
    """(N, C) embeddings from a row ("predictions") or columnar ("outputs") response."""
    if "predictions" in result:
        rows = result["predictions"]
        if rows and isinstance(rows[0], dict):  # several outputs: one dict per instance
            rows = [row["embedding"] for row in rows]
        return np.asarray(rows, np.float32)
    outputs = result["outputs"]
    return np.asarray(outputs["embedding"] if isinstance(outputs, dict) else outputs, np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="JPEG/PNG files")
    parser.add_argument("--url", default="http://localhost:8501")
    parser.add_argument("--model", default="care")
    parser.add_argument("--version", type=int, help="a version (default: the newest)")
    parser.add_argument("--pixels", action="store_true", help="send decoded pixels (serve_uint8)")
    parser.add_argument("--dry_run", action="store_true", help="print the JSON body and exit")
    parser.add_argument("--out", help="save the embeddings to this .npy file")
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        fail(
            f"--url {args.url!r} must start with http:// or https:// (e.g. http://localhost:8501)."
        )
    body = pixels_body(args.images) if args.pixels else bytes_body(args.images)
    if args.dry_run:
        print(json.dumps(body)[:2000])
        return 0
    embeddings = predict(args.url, args.model, body, args.version)
    for path, emb in zip(args.images, embeddings, strict=True):
        print(f"{path}: |e|={np.linalg.norm(emb):.4f} e[:4]={np.round(emb[:4], 4).tolist()}")
    if args.out:
        np.save(args.out, embeddings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
