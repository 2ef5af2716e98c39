"""Reads the architecture (ResNet depth and width, TransStack, heads) off checkpoint shapes.

Everything the Keras models need is in the tensor shapes: the stem kernel (7x7
imagenet, 3x3 cifar), blocks per stage, bottleneck width, TransStack blocks,
inner width, head size (the position embedding's second dimension), its map size
(the first), and the MLP widths. The image size follows from the position
embedding of the first block: res4 side x the res4 stride (16 imagenet, 4 cifar).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from care_tf.convert.mapping import MappingError

RES4_STRIDE = {"imagenet": 16, "cifar": 4}
DEFAULT_IMAGE_SIZE = 224


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A ResNet as `ResNetBackbone(depth, width_multiplier, base_channels, stem)` builds it."""

    depth: int
    base_channels: int
    width_multiplier: float
    stem: str

    @property
    def preset(self) -> str:
        """The registry name (`resnet50`, `resnet50x2`, ...)."""
        if self.width_multiplier != 1:
            return f"resnet{self.depth}x{self.width_multiplier:g}"
        return f"resnet{self.depth}"


@dataclasses.dataclass(frozen=True)
class TransformerSpec:
    """A `TransStack` and the side of the res4 map it was trained on."""

    out_channels: int
    num_blocks: int
    num_heads: int
    head_dim: int
    proj_factor: int
    downsample: bool
    fmap_size: int


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    hidden_dim: int
    projection_dim: int


# What each tensor read here must look like (PyTorch layouts).
CONV = (4, "a convolution kernel (out, in, kh, kw)")
LINEAR = (2, "a linear weight (out, in)")
POSITION = (2, "a position embedding (map side, head dim)")


def checked_shape(shapes: Mapping[str, tuple], key: str, kind: tuple[int, str]) -> tuple:
    """The shape of `key`, checked to be of `kind` (rank, description) with no empty axis.

    Raises:
        MappingError: the key is missing or its shape is not of that kind.
    """
    if key not in shapes:
        raise MappingError(f"missing key {key!r}, needed to tell the architecture.")
    shape = tuple(int(d) for d in shapes[key])
    rank, what = kind
    if len(shape) != rank or min(shape, default=0) < 1:
        raise MappingError(
            f"{key} has shape {shape}; expected {what}, {rank} axes of size >= 1. The file "
            "is damaged or is not a checkpoint of the authors' CARE code."
        )
    return shape


def _indices(shapes: Mapping[str, tuple], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in shapes if (m := regex.match(k))})


def infer_backbone(shapes: Mapping[str, tuple], prefix: str) -> BackboneSpec:
    """The ResNet under `prefix` (e.g. `student_encoder.`, `encoder.`)."""
    from care_tf.models.resnet import RESNET_SPECS

    stem_shape = checked_shape(shapes, f"{prefix}conv1.weight", CONV)
    base = int(stem_shape[0])
    stems = {7: "imagenet", 3: "cifar"}
    if stem_shape[2] not in stems:
        raise MappingError(
            f"{prefix}conv1.weight has a {stem_shape[2]}x{stem_shape[3]} kernel; care_tf's "
            "ResNet stems are 7x7 (imagenet) and 3x3 (cifar)."
        )
    blocks = tuple(
        len(_indices(shapes, rf"^{re.escape(prefix)}layer{s}\.(\d+)\.")) for s in range(1, 5)
    )
    block_type = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in shapes else "basic"
    depth = next(
        (d for d, (kind, stages) in RESNET_SPECS.items() if (kind, stages) == (block_type, blocks)),
        None,
    )
    if depth is None:
        raise MappingError(
            f"The ResNet under {prefix!r} has {block_type} blocks {blocks} per stage, which is "
            f"none of ResNet-{', -'.join(str(d) for d in RESNET_SPECS)}."
        )
    inner = int(checked_shape(shapes, f"{prefix}layer1.0.conv1.weight", CONV)[0])
    width = inner / base
    return BackboneSpec(
        depth, base, int(width) if width == int(width) else width, stems[stem_shape[2]]
    )


def infer_transformer(shapes: Mapping[str, tuple], prefix: str) -> TransformerSpec | None:
    """The TransStack under `prefix` (e.g. `student_encoder.trans.`), None when absent."""
    blocks = _indices(shapes, rf"^{re.escape(prefix)}net\.(\d+)\.")
    if not blocks:
        return None
    if blocks != list(range(len(blocks))):
        raise MappingError(f"TransStack blocks under {prefix!r} are not numbered 0..n: {blocks}.")
    first = f"{prefix}net.0."
    if f"{first}net.3.pos_emb.height" not in shapes:
        rel = [k for k in shapes if k.startswith(f"{first}net.3.pos_emb.rel_")]
        if rel:
            raise MappingError(
                f"{rel[0]}: the checkpoint uses relative position embeddings "
                "(rel_pos_emb=True); care_tf's TransStack has the paper's absolute embedding."
            )
    out_channels = int(checked_shape(shapes, f"{first}net.7.weight", CONV)[0])
    inner = int(checked_shape(shapes, f"{first}net.0.weight", CONV)[0])
    fmap, head_dim = checked_shape(shapes, f"{first}net.3.pos_emb.height", POSITION)
    if inner % head_dim or out_channels % inner:
        raise MappingError(
            f"TransStack widths under {prefix!r} (inner {inner}, head dim {head_dim}, out "
            f"{out_channels}) do not split into heads."
        )
    downsample = True
    if len(blocks) > 1:
        second = checked_shape(shapes, f"{prefix}net.1.net.3.pos_emb.height", POSITION)[0]
        downsample = second != fmap
    else:
        downsample = f"{first}shortcut.0.weight" in shapes
    return TransformerSpec(
        out_channels=out_channels,
        num_blocks=len(blocks),
        num_heads=inner // int(head_dim),
        head_dim=int(head_dim),
        proj_factor=out_channels // inner,
        downsample=downsample,
        fmap_size=int(fmap),
    )


def infer_heads(shapes: Mapping[str, tuple], prefix: str) -> HeadSpec:
    """MLP widths from `{prefix}0.weight` (hidden x in) and `{prefix}3.weight` (out x hidden)."""
    hidden = int(checked_shape(shapes, f"{prefix}0.weight", LINEAR)[0])
    projection = int(checked_shape(shapes, f"{prefix}3.weight", LINEAR)[0])
    return HeadSpec(hidden, projection)


def image_size_for(backbone: BackboneSpec, transformer: TransformerSpec | None) -> int | None:
    """The training image size implied by the TransStack's position embedding (None without)."""
    if transformer is None:
        return None
    return transformer.fmap_size * RES4_STRIDE[backbone.stem]


def build_backbone(spec: BackboneSpec, image_size: int, name: str | None = None):
    """A `ResNetBackbone` of `spec` taking (image_size, image_size, 3) images."""
    from care_tf.models.resnet import ResNetBackbone

    kwargs = {"name": name} if name else {}
    if spec.width_multiplier != 1 and not name:
        kwargs["name"] = spec.preset
    return ResNetBackbone(
        depth=spec.depth,
        width_multiplier=spec.width_multiplier,
        base_channels=spec.base_channels,
        stem=spec.stem,
        image_shape=(image_size, image_size, 3),
        **kwargs,
    )


def build_care(
    backbone_spec: BackboneSpec,
    transformer: TransformerSpec | None,
    heads: HeadSpec,
    image_size: int,
):
    """A CARE model with the checkpoint's architecture (weights still random)."""
    from care_tf.models.care import CARE
    from care_tf.models.transformer import TransStack

    backbone = build_backbone(backbone_spec, image_size)
    stack = None
    if transformer is not None:
        stack = TransStack(
            out_channels=transformer.out_channels,
            num_blocks=transformer.num_blocks,
            num_heads=transformer.num_heads,
            head_dim=transformer.head_dim,
            proj_factor=transformer.proj_factor,
            downsample=transformer.downsample,
        )
    return CARE(
        backbone,
        stack,
        hidden_dim=heads.hidden_dim,
        projection_dim=heads.projection_dim,
        t_stream=transformer is not None,
    )
