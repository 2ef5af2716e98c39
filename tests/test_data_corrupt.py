"""Bad input: corrupt, truncated, empty and non-image files; unusual but valid images."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from care_tf.data import load_source, make_pretrain_dataset
from care_tf.data.make_tfrecords import main as make_tfrecords_main

BAD = ("empty.jpg", "text.jpg", "truncated.jpg", "truncated.png")


def _encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """A flat folder: 6 valid images in odd formats and 4 unreadable ones."""
    root = tmp_path_factory.mktemp("messy")
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)
    photo = Image.fromarray(rgb)
    files = {
        "good.jpg": _encode(photo, "JPEG"),
        "cmyk.jpg": _encode(photo.convert("CMYK"), "JPEG"),
        "gray16.png": _encode(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), "PNG"),
        "rgba.png": _encode(photo.convert("RGBA"), "PNG"),
        "gray_alpha.png": _encode(photo.convert("LA"), "PNG"),
        "palette.gif": _encode(photo.convert("P"), "GIF"),
        "empty.jpg": b"",
        "text.jpg": b"this is not an image at all",
        "truncated.jpg": _encode(photo, "JPEG", quality=95)[:700],
        "truncated.png": _encode(photo, "PNG")[:500],
        "readme.txt": b"ignored: not an image extension",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def test_valid_oddities_decode_to_rgb(messy_folder, tmp_path):
    for name in ("cmyk.jpg", "gray16.png", "rgba.png", "gray_alpha.png", "palette.gif"):
        os.makedirs(tmp_path / name)
        (tmp_path / name / name).write_bytes((messy_folder / name).read_bytes())
        (image,) = [e["image"] for e in load_source(f"folder:{tmp_path / name}").as_dataset()]
        assert image.shape == (40, 48, 3) and image.dtype == tf.uint8, name
        assert int(tf.reduce_max(image)) > 200, name


def test_error_names_the_file(messy_folder):
    source = load_source(f"folder:{messy_folder}")
    assert source.num_examples == 10  # readme.txt is ignored (logged)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        list(source.as_dataset())
    assert any(str(messy_folder / name) in str(error.value) for name in BAD)
    assert "skip_corrupt=True" in str(error.value)


@pytest.mark.parametrize("name", BAD)
def test_each_bad_file_is_named(messy_folder, tmp_path, name):
    (tmp_path / name).write_bytes((messy_folder / name).read_bytes())
    with pytest.raises(tf.errors.InvalidArgumentError, match=str(tmp_path / name)):
        list(load_source(f"folder:{tmp_path}").as_dataset())


def test_skip_corrupt_drops_and_counts(messy_folder, capfd):
    source = load_source(f"folder:{messy_folder}", skip_corrupt=True)
    images = [e["image"] for e in source.as_dataset()]
    assert len(images) == 6
    err = capfd.readouterr().err
    for name in BAD:
        assert str(messy_folder / name) in err
    assert "4 skipped so far" in err


def test_pretrain_pipeline_skip_and_error(messy_folder):
    ds = make_pretrain_dataset(
        f"folder:{messy_folder}", batch_size=3, image_size=16, seed=0, skip_corrupt=True
    )
    v1, v2 = next(iter(ds))
    assert v1.shape == (3, 16, 16, 3)
    ds = make_pretrain_dataset(f"folder:{messy_folder}", batch_size=3, image_size=16, seed=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="cannot decode image"):
        for _ in ds.take(8):
            pass


def test_converter_names_or_skips_bad_files(messy_folder, tmp_path, capsys):
    assert make_tfrecords_main([str(messy_folder), str(tmp_path / "a")]) == 2
    assert "Cannot decode image" in capsys.readouterr().err
    assert make_tfrecords_main([str(messy_folder), str(tmp_path / "b"), "--skip_corrupt"]) == 0
    source = load_source(f"tfrecord:{tmp_path / 'b'}")
    assert source.num_examples == 6 and len(list(source.as_dataset())) == 6
