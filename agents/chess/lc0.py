"""Read and write lc0's ``.pb.gz`` weight files for residual (convolutional) nets, as :class:`LeelaNet`.

A file is gzip around one protobuf ``Net`` message. The protobuf wire format is decoded and encoded here by
hand from the message's public field numbers, so no protobuf library (and no GPL ``net.proto``) is needed:

- ``Net``: magic 1 (fixed32 0x1c0), min_version 3, format 4, weights 10, onnx_model 11.
- ``Format``: weights_encoding 1, network_format 2 -> input 1, output 2, network 3, policy 4, value 5,
  moves_left 6, default_activation 7.
- ``Weights``: input 1, residual 2 (conv1 1, conv2 2, se 3 -> w1 1, b1 2, w2 3, b2 4), policy 3, policy1 11,
  value 6, ip1_val_w/b 7/8, ip2_val_w/b 9/10, moves_left 12, ip1_mov_w/b 13/14, ip2_mov_w/b 15/16,
  multi-head containers value_heads 44 (winner 1) and policy_heads 45 (vanilla 3).
- ``ConvBlock``: weights 1, biases 2, bn_means 3, bn_stddivs 4 (lc0 stores the *variance* here), bn_gammas 5,
  bn_betas 6. ``Layer``: min_val 1, max_val 2, params 3, encoding 4 (LINEAR16 1, FLOAT16 2, BFLOAT16 3,
  FLOAT32 4), dims 5. LINEAR16 stores uint16 ``u`` with ``x = min + (max - min) * u / 65535``.

Layouts match PyTorch's (conv ``[out, in, k, k]``, dense ``[out, in]``). Supported: input format
``INPUT_CLASSICAL_112_PLANE``, conv policy head, WDL value head, optional moves-left head, ReLU or Mish,
with or without SE. Anything else (attention bodies, other input encodings, classical heads, ONNX-wrapped
nets) is refused with :class:`Lc0FormatError`; a truncated or corrupt file raises it too, before any module
is built.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from agents.chess.net import LeelaConfig, LeelaNet
from envs.chess.moves import CONV_PLANES
from envs.chess.planes import LC0_HISTORY_FILL

__all__ = [
    "Lc0FormatError",
    "ENCODINGS",
    "MIN_VERSIONS",
    "encode_net",
    "decode_net",
    "save_pb_gz",
    "load_pb_gz",
]

MAGIC = 0x1C0
ENCODINGS = {"LINEAR16": 1, "FLOAT16": 2, "BFLOAT16": 3, "FLOAT32": 4}
#: ``Net.min_version`` written per encoding. lc0 refuses a file whose min_version is above its own version
#: ("lc0 version >= X required"); lc0 up to v0.32.1 also refuses a file-level encoding other than LINEAR16
#: ("unsupported encoding") and decodes every layer as LINEAR16 whatever the layer says. lc0's loader from
#: 0.33 accepts a non-LINEAR16 file-level encoding when min_version >= 0.33. So a FLOAT16, BFLOAT16 or
#: FLOAT32 file states its encoding and 0.33.0: older lc0 refuse it instead of misreading it.
MIN_VERSIONS = {"LINEAR16": (0, 26, 0), "FLOAT16": (0, 33, 0), "BFLOAT16": (0, 33, 0), "FLOAT32": (0, 33, 0)}
INPUT_FORMATS = {
    0: "INPUT_UNKNOWN",
    1: "INPUT_CLASSICAL_112_PLANE",
    2: "INPUT_112_WITH_CASTLING_PLANE",
    3: "INPUT_112_WITH_CANONICALIZATION",
    4: "INPUT_112_WITH_CANONICALIZATION_HECTOPLIES",
    5: "INPUT_112_WITH_CANONICALIZATION_V2",
    132: "INPUT_112_WITH_CANONICALIZATION_HECTOPLIES_ARMAGEDDON",
    133: "INPUT_112_WITH_CANONICALIZATION_V2_ARMAGEDDON",
}
NETWORKS = {
    1: "NETWORK_CLASSICAL",
    2: "NETWORK_SE",
    3: "NETWORK_CLASSICAL_WITH_HEADFORMAT",
    4: "NETWORK_SE_WITH_HEADFORMAT",
    5: "NETWORK_ONNX",
    6: "NETWORK_ATTENTIONBODY_WITH_HEADFORMAT",
    7: "NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT",
    134: "NETWORK_AB_LEGACY_WITH_MULTIHEADFORMAT",
}
POLICIES = {0: "POLICY_UNKNOWN", 1: "POLICY_CLASSICAL", 2: "POLICY_CONVOLUTION", 3: "POLICY_ATTENTION"}
VALUES = {0: "VALUE_UNKNOWN", 1: "VALUE_CLASSICAL", 2: "VALUE_WDL", 3: "VALUE_PARAM"}
ATTENTION_FIELDS = (25, 26, 27, 28, 33, 34, 35, 36, 37, 38, 39, 40, 41)  # ip_emb*, encoder, smolgen, gating


class Lc0FormatError(ValueError):
    """The file is not a readable lc0 residual net (corrupt, truncated or an unsupported format)."""


# ---------------------------------------------------------------- protobuf wire format


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _f_varint(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _f_bytes(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _f_float(field: int, value: float) -> bytes:
    return _key(field, 5) + struct.pack("<f", value)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise Lc0FormatError("corrupt protobuf: a varint runs past the end of its message")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise Lc0FormatError("corrupt protobuf: a varint is longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field, wire type, value)``: ints for varint/fixed, bytes for length-delimited."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise Lc0FormatError("corrupt protobuf: field number 0")
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise Lc0FormatError("corrupt protobuf: a fixed-size field runs past the end of its message")
            value = int.from_bytes(buf[pos : pos + size], "little")
            pos += size
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise Lc0FormatError(
                    f"corrupt protobuf: field {field} claims {size} bytes, only {len(buf) - pos} remain"
                )
            value = buf[pos : pos + size]
            pos += size
        else:
            raise Lc0FormatError(f"corrupt protobuf: unsupported wire type {wire} (field {field})")
        yield field, wire, value


class _Msg:
    """A parsed message: field number -> list of raw values (repeated fields keep their order)."""

    def __init__(self, buf: bytes) -> None:
        self.values: dict[int, list] = {}
        for field, wire, value in _fields(buf):
            self.values.setdefault(field, []).append((wire, value))

    def has(self, field: int) -> bool:
        return field in self.values

    def int(self, field: int, default: int = 0) -> int:
        items = self.values.get(field)
        if not items:
            return default
        wire, value = items[-1]
        if wire == 2:
            raise Lc0FormatError(f"corrupt protobuf: field {field} should be a number")
        return value

    def float(self, field: int) -> float:
        wire, value = self.values[field][-1]
        if wire != 5:
            raise Lc0FormatError(f"corrupt protobuf: field {field} should be a float")
        return struct.unpack("<f", value.to_bytes(4, "little"))[0]

    def bytes(self, field: int) -> bytes | None:
        items = self.values.get(field)
        if not items:
            return None
        wire, value = items[-1]
        if wire != 2:
            raise Lc0FormatError(f"corrupt protobuf: field {field} should be length-delimited")
        return value

    def msg(self, field: int) -> _Msg | None:
        raw = self.bytes(field)
        return None if raw is None else _Msg(raw)

    def msgs(self, field: int) -> list[_Msg]:
        out = []
        for wire, value in self.values.get(field, []):
            if wire != 2:
                raise Lc0FormatError(f"corrupt protobuf: field {field} should be a message")
            out.append(_Msg(value))
        return out


# ---------------------------------------------------------------- layers


def _encode_layer(values: torch.Tensor, encoding: str) -> bytes:
    x = values.detach().to(torch.float32).flatten().numpy()
    if encoding == "LINEAR16":
        lo, hi = np.float32(x.min()), np.float32(x.max())
        span = float(hi) - float(lo)
        u = np.zeros_like(x, dtype=np.uint16)
        if span > 0:
            u = np.clip(np.round((x.astype(np.float64) - float(lo)) / span * 65535.0), 0, 65535).astype("<u2")
        return _f_float(1, float(lo)) + _f_float(2, float(hi)) + _f_bytes(3, u.astype("<u2").tobytes())
    if encoding == "FLOAT16":
        params = x.astype("<f2").tobytes()
    elif encoding == "BFLOAT16":
        params = (torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().astype("<i2")).tobytes()
    elif encoding == "FLOAT32":
        params = x.astype("<f4").tobytes()
    else:
        raise ValueError(f"unknown encoding {encoding!r}; choose one of {sorted(ENCODINGS)}")
    return _f_bytes(3, params) + _f_varint(4, ENCODINGS[encoding])


def _decode_layer(layer: _Msg, default_encoding: int, name: str) -> np.ndarray:
    params = layer.bytes(3) or b""
    encoding = layer.int(4) or default_encoding
    if encoding == 1:
        if len(params) % 2:
            raise Lc0FormatError(f"layer {name}: LINEAR16 data has an odd number of bytes")
        if not (layer.has(1) and layer.has(2)):
            raise Lc0FormatError(f"layer {name}: LINEAR16 data without min_val/max_val")
        lo, hi = layer.float(1), layer.float(2)
        u = np.frombuffer(params, dtype="<u2").astype(np.float64)
        return (lo + (hi - lo) * (u / 65535.0)).astype(np.float32)
    if encoding in (2, 3):
        if len(params) % 2:
            raise Lc0FormatError(f"layer {name}: 16-bit data has an odd number of bytes")
        if encoding == 2:
            return np.frombuffer(params, dtype="<f2").astype(np.float32)
        return (np.frombuffer(params, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    if encoding == 4:
        if len(params) % 4:
            raise Lc0FormatError(f"layer {name}: FLOAT32 data is not a multiple of 4 bytes")
        return np.frombuffer(params, dtype="<f4").astype(np.float32)
    raise Lc0FormatError(f"layer {name}: unknown weight encoding {encoding}")


# ---------------------------------------------------------------- net -> bytes


def _conv_block(sd: dict[str, torch.Tensor], prefix: str, enc: str, bn: bool = True) -> bytes:
    if not bn:
        return _f_bytes(1, _encode_layer(sd[prefix + "weight"], enc)) + _f_bytes(
            2, _encode_layer(sd[prefix + "bias"], enc)
        )
    out = _f_bytes(1, _encode_layer(sd[prefix + "conv.weight"], enc))
    for field, key in ((3, "bn.running_mean"), (4, "bn.running_var"), (5, "bn.weight"), (6, "bn.bias")):
        out += _f_bytes(field, _encode_layer(sd[prefix + key], enc))
    return out


def encode_net(net: LeelaNet, encoding: str = "LINEAR16") -> bytes:
    """The gzipped ``.pb.gz`` bytes of ``net`` (deterministic: gzip mtime 0)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; choose one of {sorted(ENCODINGS)}")
    cfg = net.config
    if cfg.input_planes != 112:
        raise ValueError("lc0 files hold 112-plane nets only")
    sd = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    layer = lambda key: _encode_layer(sd[key], encoding)  # noqa: E731
    w = _f_bytes(1, _conv_block(sd, "inputconv.", encoding))
    for i in range(cfg.blocks):
        res = _f_bytes(1, _conv_block(sd, f"block{i}.conv1.", encoding))
        res += _f_bytes(2, _conv_block(sd, f"block{i}.conv2.", encoding))
        if cfg.se_ratio:
            se = b"".join(
                _f_bytes(f, layer(f"block{i}.se.{k}"))
                for f, k in ((1, "fc1.weight"), (2, "fc1.bias"), (3, "fc2.weight"), (4, "fc2.bias"))
            )
            res += _f_bytes(3, se)
        w += _f_bytes(2, res)
    w += _f_bytes(3, _conv_block(sd, "policy.", encoding, bn=False))
    w += _f_bytes(6, _conv_block(sd, "value.", encoding))
    for field, key in (
        (7, "ip1_val.weight"),
        (8, "ip1_val.bias"),
        (9, "ip2_val.weight"),
        (10, "ip2_val.bias"),
    ):
        w += _f_bytes(field, layer(key))
    w += _f_bytes(11, _conv_block(sd, "policy1.", encoding))
    if cfg.moves_left:
        w += _f_bytes(12, _conv_block(sd, "moves_left.", encoding))
        for field, key in (
            (13, "ip1_mov.weight"),
            (14, "ip1_mov.bias"),
            (15, "ip2_mov.weight"),
            (16, "ip2_mov.bias"),
        ):
            w += _f_bytes(field, layer(key))
    net_format = (
        _f_varint(1, 1)  # INPUT_CLASSICAL_112_PLANE
        + _f_varint(2, 2)  # OUTPUT_WDL
        + _f_varint(3, 4 if cfg.se_ratio else 3)  # NETWORK_SE / CLASSICAL _WITH_HEADFORMAT
        + _f_varint(4, 2)  # POLICY_CONVOLUTION
        + _f_varint(5, 2)  # VALUE_WDL
        + _f_varint(6, 1 if cfg.moves_left else 0)
        + _f_varint(7, 1 if cfg.activation == "mish" else 0)
    )
    fmt = _f_varint(1, ENCODINGS[encoding]) + _f_bytes(2, net_format)
    version = b"".join(_f_varint(f, v) for f, v in zip((1, 2, 3), MIN_VERSIONS[encoding]))
    message = (
        _key(1, 5) + struct.pack("<I", MAGIC) + _f_bytes(3, version) + _f_bytes(4, fmt) + _f_bytes(10, w)
    )
    return gzip.compress(message, mtime=0)


def save_pb_gz(net: LeelaNet, path: str | Path, encoding: str = "LINEAR16") -> None:
    """Write ``net`` as an lc0 weights file; ``encoding`` is LINEAR16 (lc0's default), FLOAT16, BFLOAT16 or FLOAT32.

    LINEAR16 files (min_version 0.26.0) load in every lc0 since 0.26; the others carry min_version 0.33.0
    (:data:`MIN_VERSIONS`), which lc0 v0.32.1 and older refuse with "lc0 version >= 0.33.0 required"."""
    Path(path).write_bytes(encode_net(net, encoding))


# ---------------------------------------------------------------- bytes -> net


def _check_format(net_msg: _Msg) -> tuple[int, bool, str]:
    """Validate ``Net.format``; returns (default layer encoding, has moves-left head, activation)."""
    if net_msg.has(11):
        raise Lc0FormatError("this file wraps an ONNX model (onnx_model); load the ONNX graph instead")
    fmt = net_msg.msg(4)
    if fmt is None:
        raise Lc0FormatError(
            "no format field: a pre-format classical net (classical policy and value heads), not supported"
        )
    nf = fmt.msg(2) or _Msg(b"")
    inp, network = nf.int(1, 1), nf.int(3)
    policy, value, mlh, act = nf.int(4), nf.int(5), nf.int(6), nf.int(7)
    if network in (5, 6, 7, 134):
        raise Lc0FormatError(
            f"network {NETWORKS[network]}: attention-body (transformer) and ONNX nets are not supported; "
            "only residual convolutional nets are"
        )
    if network not in (1, 2, 3, 4):
        raise Lc0FormatError(f"unknown network structure {network}")
    if inp != 1:
        raise Lc0FormatError(
            f"input format {INPUT_FORMATS.get(inp, f'unknown ({inp})')} is not supported; "
            "envs.chess.planes encodes INPUT_CLASSICAL_112_PLANE only"
        )
    if policy != 2:
        raise Lc0FormatError(
            f"policy head {POLICIES.get(policy, policy)} is not supported; only POLICY_CONVOLUTION"
        )
    if value != 2:
        raise Lc0FormatError(f"value head {VALUES.get(value, value)} is not supported; only VALUE_WDL")
    if mlh not in (0, 1):
        raise Lc0FormatError(f"unknown moves-left format {mlh}")
    if act not in (0, 1):
        raise Lc0FormatError(f"unknown default activation {act}")
    return fmt.int(1), bool(mlh), "mish" if act == 1 else "relu"


def decode_net(data: bytes) -> LeelaNet:
    """Build a :class:`LeelaNet` (eval mode) from ``.pb.gz`` bytes; :class:`Lc0FormatError` if unreadable."""
    if not data:
        raise Lc0FormatError("not a readable gzip stream: the file is empty")
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise Lc0FormatError(f"not a readable gzip stream (truncated or corrupt file?): {err}") from err
    net_msg = _Msg(raw)
    if net_msg.int(1) != MAGIC:
        raise Lc0FormatError(f"bad magic {net_msg.int(1):#x} (expected {MAGIC:#x}): not an lc0 weights file")
    default_enc, has_mlh, activation = _check_format(net_msg)
    w = net_msg.msg(10)
    if w is None:
        raise Lc0FormatError("the file holds no weights")
    if any(w.has(f) for f in ATTENTION_FIELDS):
        raise Lc0FormatError("the weights contain an attention body (encoder/embedding); not supported")

    arrays: dict[str, np.ndarray] = {}

    def take(msg: _Msg | None, field: int, key: str, required: bool = True) -> None:
        layer = msg.msg(field) if msg is not None else None
        if layer is None or not layer.bytes(3):
            if required:
                raise Lc0FormatError(f"missing layer {key}")
            return
        arrays[key] = _decode_layer(layer, default_enc, key)

    def conv_block(msg: _Msg | None, prefix: str, what: str, bn: bool = True) -> None:
        if msg is None:
            raise Lc0FormatError(f"missing {what}")
        if not bn:
            take(msg, 1, prefix + "weight")
            take(msg, 2, prefix + "bias")
            return
        take(msg, 1, prefix + "conv.weight")
        take(msg, 3, prefix + "bn.running_mean")
        take(msg, 4, prefix + "bn.running_var")
        take(msg, 5, prefix + "bn.weight", required=False)
        take(msg, 6, prefix + "bn.bias", required=False)
        take(msg, 2, prefix + "conv_bias", required=False)
        n = len(arrays[prefix + "bn.running_mean"])
        arrays.setdefault(prefix + "bn.weight", np.ones(n, np.float32))
        arrays.setdefault(prefix + "bn.bias", np.zeros(n, np.float32))
        bias = arrays.pop(prefix + "conv_bias", None)
        if bias is not None:  # lc0 folds a conv bias into the BN mean
            if bias.shape != arrays[prefix + "bn.running_mean"].shape:
                raise Lc0FormatError(f"{what}: bias and bn_means differ in length")
            arrays[prefix + "bn.running_mean"] = arrays[prefix + "bn.running_mean"] - bias

    residuals = w.msgs(2)
    conv_block(w.msg(1), "inputconv.", "input convolution")
    se_hidden = set()
    for i, res in enumerate(residuals):
        conv_block(res.msg(1), f"block{i}.conv1.", f"residual {i} conv1")
        conv_block(res.msg(2), f"block{i}.conv2.", f"residual {i} conv2")
        se = res.msg(3)
        if se is not None:
            for field, key in ((1, "fc1.weight"), (2, "fc1.bias"), (3, "fc2.weight"), (4, "fc2.bias")):
                take(se, field, f"block{i}.se.{key}")
            se_hidden.add(len(arrays[f"block{i}.se.fc1.bias"]))
        else:
            se_hidden.add(0)
    if len(se_hidden) > 1:
        raise Lc0FormatError("residual blocks differ in their SE units; not supported")

    heads = w.msg(45)
    policy_head = heads.msg(3) if heads is not None else None  # policy_heads.vanilla
    if policy_head is not None:
        conv_block(policy_head.msg(10), "policy1.", "policy1")
        conv_block(policy_head.msg(11), "policy.", "policy", bn=False)
    else:
        conv_block(w.msg(11), "policy1.", "policy1")
        conv_block(w.msg(3), "policy.", "policy", bn=False)
    vheads = w.msg(44)
    value_head = vheads.msg(1) if vheads is not None else None  # value_heads.winner
    if value_head is not None:
        conv_block(value_head.msg(11), "value.", "value convolution")
        fields = ((3, "ip1_val.weight"), (4, "ip1_val.bias"), (5, "ip2_val.weight"), (6, "ip2_val.bias"))
        for field, key in fields:
            take(value_head, field, key)
    else:
        conv_block(w.msg(6), "value.", "value convolution")
        for field, key in (
            (7, "ip1_val.weight"),
            (8, "ip1_val.bias"),
            (9, "ip2_val.weight"),
            (10, "ip2_val.bias"),
        ):
            take(w, field, key)
    if has_mlh:
        conv_block(w.msg(12), "moves_left.", "moves-left convolution")
        for field, key in (
            (13, "ip1_mov.weight"),
            (14, "ip1_mov.bias"),
            (15, "ip2_mov.weight"),
            (16, "ip2_mov.bias"),
        ):
            take(w, field, key)

    filters = len(arrays["inputconv.bn.running_mean"])
    hidden = se_hidden.pop() if se_hidden else 0
    if hidden and (filters % hidden or filters // (filters // hidden) != hidden):
        raise Lc0FormatError(f"SE width {hidden} does not divide {filters} filters; not supported")
    config = LeelaConfig(
        blocks=len(residuals),
        filters=filters,
        se_ratio=filters // hidden if hidden else 0,
        value_channels=len(arrays["value.bn.running_mean"]),
        value_hidden=len(arrays["ip1_val.bias"]),
        moves_left=has_mlh,
        mlh_channels=len(arrays["moves_left.bn.running_mean"]) if has_mlh else 8,
        mlh_hidden=len(arrays["ip1_mov.bias"]) if has_mlh else 128,
        activation=activation,
    )
    net = LeelaNet(config)
    state = net.state_dict()
    for key, value in arrays.items():
        if key not in state:
            raise Lc0FormatError(f"unexpected layer {key}")
        if value.size != state[key].numel():
            raise Lc0FormatError(
                f"layer {key} has {value.size} values, expected {state[key].numel()} "
                f"for shape {tuple(state[key].shape)} (truncated or inconsistent file)"
            )
        if not np.isfinite(value).all():
            raise Lc0FormatError(f"layer {key} holds non-finite values")
        state[key] = torch.from_numpy(value.copy()).reshape(state[key].shape)
    missing = [k for k in state if k not in arrays and not k.endswith("num_batches_tracked")]
    if missing:
        raise Lc0FormatError(f"missing layers: {missing}")
    if state["policy.weight"].shape[0] != CONV_PLANES:
        raise Lc0FormatError("the conv policy head must have 80 planes")
    net.load_state_dict(state)
    net.history_fill = LC0_HISTORY_FILL  # lc0 feeds its nets a bare FEN's position repeated into the history
    return net.eval()


def load_pb_gz(path: str | Path) -> LeelaNet:
    """Load an lc0 ``.pb.gz`` residual net as a :class:`LeelaNet` in eval mode (see :func:`decode_net`)."""
    return decode_net(Path(path).read_bytes())
