"""The RFB-320 face detector as a Keras network, to serve the upstream TensorFlow checkpoint as a
SavedModel.

Written from the published architecture (Ultra-Light-Fast-Generic-Face-Detector-1MB, RFB-320:
a MobileNet-style backbone of depthwise-separable blocks with one receptive-field block, four
detection levels of 3, 2, 2 and 3 priors per cell). The layers carry the names the upstream
checkpoint stores its variables under (``basenet.0.0_conv/kernel``, ``basenet.7.branch0.0_bn/
gamma``, ``reg_0_sep_dconvbias/bias``, ...), so ``restore_checkpoint`` finds every variable by
name. Unlike the upstream Keras model, the network ends where the ``*_without_postprocessing``
models end: box regressions (N, 4420, 4) and class probabilities (N, 4420, 2), decoded by
``inference_service.detection.postprocessing`` like every other runtime's.

Padding: PyTorch's symmetric ``padding=p`` is a ``ZeroPadding2D(p)`` before a ``valid``
convolution (Keras' ``same`` pads asymmetrically for stride 2 and would shift the boxes).

TensorFlow and Keras are imported when a function here is called, not with the module.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

INPUT_HEIGHT, INPUT_WIDTH = 240, 320
NUM_CLASSES = 2
BASE_CHANNELS = 16
PRIORS_PER_CELL = (3, 2, 2, 3)
"""Priors per feature-map cell of each detection level (the sizes in ``MIN_BOXES``)."""

# The backbone, ``basenet.<i>``: (block, output channels, stride). Blocks 7, 10 and 12 feed the
# first three detection levels; the extra layers after block 12 feed the fourth.
BACKBONE = (
    ("conv_bn", 1, 2),
    ("conv_dw", 2, 1),
    ("conv_dw", 2, 2),
    ("conv_dw", 2, 1),
    ("conv_dw", 4, 2),
    ("conv_dw", 4, 1),
    ("conv_dw", 4, 1),
    ("rfb", 4, 1),
    ("conv_dw", 8, 2),
    ("conv_dw", 8, 1),
    ("conv_dw", 8, 1),
    ("conv_dw", 16, 2),
    ("conv_dw", 16, 1),
)
LEVEL_TAPS = (7, 10, 12)
BN_EPSILON = 1e-5


class _Builder:
    """Adds named layers to a functional Keras graph."""

    def __init__(self, keras: Any) -> None:
        self.layers = keras.layers

    def conv(
        self,
        x: Any,
        channels: int,
        kernel: int,
        *,
        name: str,
        stride: int = 1,
        pad: int = 0,
        dilation: int = 1,
    ) -> Any:
        """Symmetric zero padding, then a convolution without bias (a batch norm follows)."""
        if pad:
            x = self.layers.ZeroPadding2D(pad, name=f"{name}_padding")(x)
        return self.layers.Conv2D(
            channels,
            kernel,
            strides=stride,
            dilation_rate=dilation,
            use_bias=False,
            name=f"{name}_conv",
        )(x)

    def bn(self, x: Any, name: str) -> Any:
        return self.layers.BatchNormalization(epsilon=BN_EPSILON, name=name)(x)

    def relu(self, x: Any, name: str) -> Any:
        return self.layers.ReLU(name=name)(x)

    def conv_bn(self, x: Any, channels: int, stride: int, prefix: str) -> Any:
        """3x3 convolution, batch norm, ReLU."""
        x = self.layers.ZeroPadding2D(1, name=f"{prefix}.0_padding")(x)
        x = self.layers.Conv2D(
            channels, 3, strides=stride, use_bias=False, name=f"{prefix}.0_conv"
        )(x)
        return self.relu(self.bn(x, f"{prefix}.1_bn"), f"{prefix}.2_relu")

    def conv_dw(self, x: Any, channels: int, stride: int, prefix: str) -> Any:
        """Depthwise 3x3, batch norm, ReLU; pointwise 1x1, batch norm, ReLU."""
        x = self.layers.ZeroPadding2D(1, name=f"{prefix}.0_padding")(x)
        x = self.layers.DepthwiseConv2D(
            3, strides=stride, use_bias=False, name=f"{prefix}.0_dconv"
        )(x)
        x = self.relu(self.bn(x, f"{prefix}.1_bn"), f"{prefix}.2_relu")
        x = self.layers.Conv2D(channels, 1, use_bias=False, name=f"{prefix}.3_conv")(x)
        return self.relu(self.bn(x, f"{prefix}.4_bn"), f"{prefix}.5_relu")

    def basic(
        self,
        x: Any,
        channels: int,
        kernel: int,
        prefix: str,
        *,
        stride: int = 1,
        pad: int = 0,
        dilation: int = 1,
        relu: bool = True,
    ) -> Any:
        """Convolution (no bias), batch norm, optional ReLU: one step of an RFB branch."""
        x = self.conv(x, channels, kernel, name=prefix, stride=stride, pad=pad, dilation=dilation)
        x = self.bn(x, f"{prefix}_bn")
        return self.relu(x, f"{prefix}_relu") if relu else x

    def rfb(self, x: Any, in_channels: int, channels: int, stride: int, prefix: str) -> Any:
        """The receptive-field block: three branches of growing dilation (2, 3, 5), joined by a
        linear 1x1 convolution, plus a 1x1 shortcut (the residual scale is 1)."""
        inner = in_channels // 8
        b0 = self.basic(x, inner, 1, f"{prefix}.branch0.0", relu=False)
        b0 = self.basic(b0, 2 * inner, 3, f"{prefix}.branch0.1", stride=stride, pad=1)
        b0 = self.basic(b0, 2 * inner, 3, f"{prefix}.branch0.2", pad=2, dilation=2, relu=False)
        b1 = self.basic(x, inner, 1, f"{prefix}.branch1.0", relu=False)
        b1 = self.basic(b1, 2 * inner, 3, f"{prefix}.branch1.1", stride=stride, pad=1)
        b1 = self.basic(b1, 2 * inner, 3, f"{prefix}.branch1.2", pad=3, dilation=3, relu=False)
        b2 = self.basic(x, inner, 1, f"{prefix}.branch2.0", relu=False)
        b2 = self.basic(b2, inner // 2 * 3, 3, f"{prefix}.branch2.1", pad=1)
        b2 = self.basic(b2, 2 * inner, 3, f"{prefix}.branch2.2", stride=stride, pad=1)
        b2 = self.basic(b2, 2 * inner, 3, f"{prefix}.branch2.3", pad=5, dilation=5, relu=False)
        joined = self.layers.Concatenate(axis=-1, name=f"{prefix}_cat")([b0, b1, b2])
        joined = self.basic(joined, channels, 1, f"{prefix}.convlinear", relu=False)
        shortcut = self.basic(x, channels, 1, f"{prefix}.shortcut", stride=stride, relu=False)
        added = self.layers.Add(name=f"{prefix}_add")([joined, shortcut])
        return self.relu(added, f"{prefix}_relu")

    def separable(self, x: Any, channels: int, stride: int, prefix: str) -> Any:
        """Depthwise 3x3 with bias, ReLU, pointwise 1x1 with bias (the heads and the extras)."""
        x = self.layers.ZeroPadding2D(1, name=f"{prefix}_dconv_padding")(x)
        x = self.layers.DepthwiseConv2D(3, strides=stride, name=f"{prefix}_dconvbias")(x)
        x = self.relu(x, f"{prefix}_relu")
        return self.layers.Conv2D(channels, 1, name=f"{prefix}_convbias")(x)


def build_rfb320() -> Any:
    """The RFB-320 network: input NHWC float32 (N, 240, 320, 3), already normalized
    ((x - 127) / 128); outputs ``boxes`` (N, 4420, 4) regressions and ``scores`` (N, 4420, 2)
    softmax probabilities (column 1: face)."""
    import keras

    build = _Builder(keras)
    image = keras.Input(shape=(INPUT_HEIGHT, INPUT_WIDTH, 3), name="image")
    x = image
    levels = []
    channels = 3
    for index, (block, width, stride) in enumerate(BACKBONE):
        prefix = f"basenet.{index}"
        out = width * BASE_CHANNELS
        if block == "conv_bn":
            x = build.conv_bn(x, out, stride, prefix)
        elif block == "conv_dw":
            x = build.conv_dw(x, out, stride, prefix)
        else:
            x = build.rfb(x, channels, out, stride, prefix)
        channels = out
        if index in LEVEL_TAPS:
            levels.append(x)
    extra = keras.layers.Conv2D(4 * BASE_CHANNELS, 1, name="extras_convbias")(x)
    extra = build.relu(extra, "extras_relu1")
    extra = build.separable(extra, 16 * BASE_CHANNELS, 2, "extras_sep")
    levels.append(build.relu(extra, "extras_relu2"))

    regressions, logits = [], []
    for level, (feature, priors) in enumerate(zip(levels, PRIORS_PER_CELL, strict=True)):
        if level < 3:
            reg = build.separable(feature, priors * 4, 1, f"reg_{level}_sep")
            cls = build.separable(feature, priors * NUM_CLASSES, 1, f"cls_{level}_sep")
        else:
            conv = keras.layers.Conv2D
            reg = conv(priors * 4, 3, padding="same", name=f"reg_{level}_convbias")(feature)
            cls = conv(priors * NUM_CLASSES, 3, padding="same", name=f"cls_{level}_convbias")(
                feature
            )
        # Row-major cells, then the cell's priors: the priors' order (level, row, column, size).
        regressions.append(keras.layers.Reshape((-1, 4), name=f"reg_{level}_flat")(reg))
        logits.append(keras.layers.Reshape((-1, NUM_CLASSES), name=f"cls_{level}_flat")(cls))
    boxes = keras.layers.Concatenate(axis=1, name="boxes")(regressions)
    scores = keras.layers.Concatenate(axis=1, name="logits")(logits)
    scores = keras.layers.Softmax(axis=-1, name="scores")(scores)
    return keras.Model(inputs=image, outputs={"boxes": boxes, "scores": scores}, name="rfb320")


def checkpoint_prefix(path: str | os.PathLike[str]) -> str:
    """The prefix of a TF checkpoint given its folder (holding ``variables.index``) or prefix."""
    path = Path(path)
    if path.is_dir():
        return str(path / "variables")
    return str(path)


def restore_checkpoint(model: Any, checkpoint: str | os.PathLike[str]) -> int:
    """Assign every weight of ``model`` from the TF2 checkpoint at ``checkpoint`` by its name
    (``<layer>/<variable>``, as the checkpoint's object graph records each variable's full
    name); returns how many. Raises ``ValueError`` when a weight is missing or misshapen, or
    when the checkpoint holds variables the model does not use."""
    import tensorflow as tf
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    reader = tf.train.load_checkpoint(checkpoint_prefix(checkpoint))
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    keys = {
        attribute.full_name.removesuffix(":0"): attribute.checkpoint_key
        for node in graph.nodes
        for attribute in node.attributes
        if attribute.name == "VARIABLE_VALUE"
    }
    used = set()
    for layer in model.layers:
        for weight in layer.weights:
            name = f"{layer.name}/{weight.name}"
            if name not in keys and weight.name == "kernel":
                name = f"{layer.name}/depthwise_kernel"  # Keras 2's name of a depthwise kernel
            if name not in keys:
                raise ValueError(f"the checkpoint has no variable {name}")
            value = reader.get_tensor(keys[name])
            if tuple(value.shape) != tuple(weight.shape):
                raise ValueError(f"{name}: checkpoint shape {value.shape}, model {weight.shape}")
            weight.assign(value)
            used.add(name)
    if unused := sorted(set(keys) - used):
        raise ValueError(f"checkpoint variables the network does not use: {unused[:5]}")
    return len(used)


def export_saved_model(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Build RFB-320, restore ``checkpoint`` into it and write a SavedModel to ``out_dir``
    (which must not exist): signature ``serving_default`` takes ``image`` NHWC float32
    (N, 240, 320, 3) and returns ``boxes`` and ``scores``. Written to a temporary folder beside
    ``out_dir`` and renamed into place once complete."""
    import tensorflow as tf

    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists")
    model = build_rfb320()
    restored = restore_checkpoint(model, checkpoint)

    class Serving(tf.Module):
        def __init__(self, network: Any) -> None:
            super().__init__()
            self.network = network

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[
                tf.TensorSpec([None, INPUT_HEIGHT, INPUT_WIDTH, 3], tf.float32, name="image")
            ]
        )
        def serve(self, image: Any) -> dict[str, Any]:
            outputs = self.network(image, training=False)
            return {"boxes": outputs["boxes"], "scores": outputs["scores"]}

    module = Serving(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        tf.saved_model.save(module, str(temp), signatures={"serving_default": module.serve})
        temp.chmod(0o755)  # mkdtemp made it private
        os.replace(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    logger.info("exported RFB-320 (%d variables from %s) to %s", restored, checkpoint, out)
    return out


def archive_folder(folder: str | os.PathLike[str], archive: str | os.PathLike[str]) -> Path:
    """Pack ``folder`` (e.g. a SavedModel) into ``archive`` (``.zip``, ``.tar.gz`` or
    ``.tgz``) under its own name, as ``ArchiveModelSource`` unpacks it."""
    folder, archive = Path(folder), Path(archive)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
            for file in files:
                zipped.write(file, Path(folder.name) / file.relative_to(folder))
    elif archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive, "w:gz") as tarred:
            tarred.add(folder, arcname=folder.name)
    else:
        raise ValueError(f"{archive}: expected .zip, .tar.gz or .tgz")
    return archive
