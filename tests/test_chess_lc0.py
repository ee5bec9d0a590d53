"""lc0 ``.pb.gz`` weight files: exact round trips, a hand-written reference forward, and clear refusals."""

import gzip
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from agents.chess import lc0
from agents.chess.lc0 import ENCODINGS, Lc0FormatError, decode_net, encode_net, load_pb_gz, save_pb_gz
from agents.chess.net import LeelaNet, load_checkpoint
from envs.chess.moves import POLICY_INDEX, conv_flat_index

FINAL = Path(__file__).resolve().parents[1] / "agents" / "chess" / "checkpoints" / "leela_6x32_final.pt"


pytestmark = pytest.mark.usefixtures("one_thread")


def random_net(seed: int = 0, **config) -> LeelaNet:
    """A small net with every parameter and BN statistic randomised (BN must not be the identity)."""
    torch.manual_seed(seed)
    net = LeelaNet(
        **{"blocks": 2, "filters": 16, "se_ratio": 4, "moves_left": True, "value_hidden": 32, **config}
    ).eval()
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif tensor.is_floating_point():
                tensor.normal_(0, 0.3)
    return net


def planes(n: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 112, 8, 8, generator=g) < 0.1).float()
    x[:, 109] = 7.0
    x[:, 111] = 1.0
    return x


def reference_forward(sd: dict[str, torch.Tensor], blocks: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """lc0's residual net written out with functional ops over a state dict."""

    def conv_bn(prefix, h, relu=True):
        w = sd[prefix + "conv.weight"]
        h = F.conv2d(h, w, padding=w.shape[-1] // 2)
        mean, var = sd[prefix + "bn.running_mean"], sd[prefix + "bn.running_var"]
        gamma, beta = sd[prefix + "bn.weight"], sd[prefix + "bn.bias"]
        h = (h - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5) * gamma[:, None, None]
        h = h + beta[:, None, None]
        return h.relu() if relu else h

    h = conv_bn("inputconv.", x)
    for i in range(blocks):
        y = conv_bn(f"block{i}.conv2.", conv_bn(f"block{i}.conv1.", h), relu=False)
        pooled = y.mean(dim=(2, 3))
        s = F.linear(pooled, sd[f"block{i}.se.fc1.weight"], sd[f"block{i}.se.fc1.bias"]).relu()
        s = F.linear(s, sd[f"block{i}.se.fc2.weight"], sd[f"block{i}.se.fc2.bias"])
        c = y.shape[1]
        y = torch.sigmoid(s[:, :c])[:, :, None, None] * y + s[:, c:][:, :, None, None]
        h = (h + y).relu()
    p = F.conv2d(conv_bn("policy1.", h), sd["policy.weight"], sd["policy.bias"], padding=1).flatten(1)
    gather = torch.tensor([conv_flat_index(m) for m in POLICY_INDEX])
    v = conv_bn("value.", h).flatten(1)
    v = F.linear(
        F.linear(v, sd["ip1_val.weight"], sd["ip1_val.bias"]).relu(), sd["ip2_val.weight"], sd["ip2_val.bias"]
    )
    m = conv_bn("moves_left.", h).flatten(1)
    m = F.linear(
        F.linear(m, sd["ip1_mov.weight"], sd["ip1_mov.bias"]).relu(), sd["ip2_mov.weight"], sd["ip2_mov.bias"]
    )
    return {"policy": p[:, gather], "wdl": v, "mlh": m.relu()}


def test_float32_round_trip_is_exact(tmp_path):
    net = random_net()
    save_pb_gz(net, tmp_path / "net.pb.gz", encoding="FLOAT32")
    loaded = load_pb_gz(tmp_path / "net.pb.gz")
    assert loaded.config == net.config
    for key, value in net.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded.state_dict()[key], value), key
    x = planes()
    for key, value in net.heads(x).items():
        assert torch.equal(loaded.heads(x)[key], value), key


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_every_encoding_round_trips_bytes_and_stays_close(encoding):
    net = random_net(seed=3)
    data = encode_net(net, encoding)
    loaded = decode_net(data)
    assert encode_net(loaded, encoding) == data  # write -> read -> write gives identical bytes
    tol = {"FLOAT32": 0.0, "LINEAR16": 2e-3, "FLOAT16": 5e-3, "BFLOAT16": 5e-2}[encoding]
    x = planes()
    for key, value in net.heads(x).items():
        torch.testing.assert_close(
            loaded.heads(x)[key], value, atol=tol * (1 + value.abs().max().item()), rtol=0
        )


def test_linear16_error_is_within_one_quantisation_step():
    net = random_net(seed=4)
    loaded = decode_net(encode_net(net, "LINEAR16"))
    for key, value in net.state_dict().items():
        if value.is_floating_point():
            step = (value.max() - value.min()).item() / 65535
            assert (loaded.state_dict()[key] - value).abs().max().item() <= step * 0.5 + 1e-6, key


def test_loaded_module_equals_hand_written_forward():
    net = decode_net(encode_net(random_net(seed=5), "LINEAR16"))
    sd = net.state_dict()
    x = planes(4)
    ref = reference_forward(sd, net.config.blocks, x)
    out = net.heads(x)
    for key in ("policy", "wdl", "mlh"):
        torch.testing.assert_close(out[key], ref[key], atol=1e-4, rtol=1e-4)


def test_variants_without_se_and_with_mish_round_trip():
    for config in ({"se_ratio": 0, "moves_left": False}, {"activation": "mish"}):
        net = random_net(seed=6, **config)
        loaded = decode_net(encode_net(net, "FLOAT32"))
        assert loaded.config == net.config
        x = planes(2)
        assert torch.equal(loaded.heads(x)["policy"], net.heads(x)["policy"])


@pytest.mark.skipif(not FINAL.exists(), reason="shipped checkpoint missing")
def test_shipped_net_exports_and_reloads(tmp_path):
    net = load_checkpoint(FINAL)
    save_pb_gz(net, tmp_path / "leela.pb.gz")
    loaded = load_pb_gz(tmp_path / "leela.pb.gz")
    x = planes(32)
    a, b = net.heads(x), loaded.heads(x)
    assert (a["policy"].argmax(1) == b["policy"].argmax(1)).float().mean() > 0.95
    torch.testing.assert_close(b["wdl"], a["wdl"], atol=0.05, rtol=0)
    assert (tmp_path / "leela.pb.gz").stat().st_size < 2_000_000


# ---------------------------------------------------------------- corrupt and unsupported files


def rewrap(data: bytes, replace: dict[int, bytes | None] | None = None, extra: bytes = b"") -> bytes:
    """Re-encode the top-level Net message with some fields replaced (None drops them)."""
    raw = gzip.decompress(data)
    out = b""
    for field, wire, value in lc0._fields(raw):
        if replace and field in replace:
            if replace[field] is not None:
                out += lc0._f_bytes(field, replace[field])
            replace = {**replace, field: None}
            continue
        if wire == 2:
            out += lc0._f_bytes(field, value)
        elif wire == 5:
            out += lc0._key(field, 5) + struct.pack("<I", value)
        else:
            out += lc0._f_varint(field, value)
    return gzip.compress(out + extra)


def format_bytes(**overrides: int) -> bytes:
    fields = {
        "input": 1,
        "output": 2,
        "network": 4,
        "policy": 2,
        "value": 2,
        "moves_left": 1,
        "activation": 0,
    }
    fields.update(overrides)
    numbers = dict(zip(fields, range(1, 8)))
    nf = b"".join(lc0._f_varint(numbers[k], v) for k, v in fields.items())
    return lc0._f_varint(1, 1) + lc0._f_bytes(2, nf)


@pytest.fixture(scope="module")
def good_bytes() -> bytes:
    return encode_net(random_net(seed=7), "LINEAR16")


def test_rewrap_unchanged_still_loads(good_bytes):
    assert decode_net(rewrap(good_bytes)).config.blocks == 2


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.7, 0.999])
def test_truncated_gzip_is_rejected(good_bytes, fraction):
    with pytest.raises(Lc0FormatError, match="gzip"):
        decode_net(good_bytes[: int(len(good_bytes) * fraction)])


@pytest.mark.parametrize("fraction", [0.001, 0.2, 0.5, 0.9, 0.9999])
def test_truncated_message_is_rejected(good_bytes, fraction):
    raw = gzip.decompress(good_bytes)
    with pytest.raises(Lc0FormatError):
        decode_net(gzip.compress(raw[: max(1, int(len(raw) * fraction))]))


def test_corrupt_bytes_are_rejected(good_bytes):
    raw = bytearray(gzip.decompress(good_bytes))
    with pytest.raises(Lc0FormatError, match="magic"):
        decode_net(gzip.compress(b"\x0d\x00\x00\x00\x00" + bytes(raw[5:])))
    with pytest.raises(Lc0FormatError):
        decode_net(b"definitely not a weights file")
    damaged = gzip.compress(bytes(raw))
    damaged = damaged[:200] + bytes(b ^ 0xFF for b in damaged[200:260]) + damaged[260:]
    with pytest.raises(Lc0FormatError):
        decode_net(damaged)


def test_missing_or_inconsistent_layers_are_rejected(good_bytes):
    raw = gzip.decompress(good_bytes)
    weights = next(v for f, w, v in lc0._fields(raw) if f == 10)
    # drop the value head's second dense layer
    kept = b"".join(lc0._f_bytes(f, v) for f, w, v in lc0._fields(weights) if f not in (9, 10))
    with pytest.raises(Lc0FormatError, match="missing layer ip2_val"):
        decode_net(rewrap(good_bytes, {10: kept}))
    # a second residual block whose conv2 is the input conv (wrong size)
    fields = list(lc0._fields(weights))
    input_conv = next(v for f, w, v in fields if f == 1)
    res = next(v for f, w, v in fields if f == 2)
    bad_res = b"".join(lc0._f_bytes(f, input_conv if f == 2 else v) for f, w, v in lc0._fields(res))
    bad = b"".join(lc0._f_bytes(f, bad_res if f == 2 else v) for f, w, v in fields)
    with pytest.raises(Lc0FormatError, match="values, expected"):
        decode_net(rewrap(good_bytes, {10: bad}))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"network": 6}, "attention"),
        ({"network": 7}, "attention"),
        ({"input": 3}, "INPUT_112_WITH_CANONICALIZATION"),
        ({"input": 2}, "INPUT_112_WITH_CASTLING_PLANE"),
        ({"input": 77}, "unknown"),
        ({"policy": 3}, "POLICY_ATTENTION"),
        ({"policy": 1}, "POLICY_CLASSICAL"),
        ({"value": 1}, "VALUE_CLASSICAL"),
    ],
)
def test_unsupported_formats_are_refused(good_bytes, overrides, message):
    with pytest.raises(Lc0FormatError, match=message):
        decode_net(rewrap(good_bytes, {4: format_bytes(**overrides)}))


def test_onnx_and_attention_weights_are_refused(good_bytes):
    with pytest.raises(Lc0FormatError, match="ONNX"):
        decode_net(rewrap(good_bytes, extra=lc0._f_bytes(11, b"")))
    raw = gzip.decompress(good_bytes)
    weights = next(v for f, w, v in lc0._fields(raw) if f == 10)
    with pytest.raises(Lc0FormatError, match="attention"):
        decode_net(rewrap(good_bytes, {10: weights + lc0._f_bytes(27, b"")}))
    with pytest.raises(Lc0FormatError, match="no format"):
        decode_net(rewrap(good_bytes, {4: None}))
