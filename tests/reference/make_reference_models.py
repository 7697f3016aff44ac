#!/usr/bin/env python3
"""Build tiny random-weight reference models for Granary's model tests.

For every spec in SPECS this writes tests/reference/models/<name>/ with
  config.json             (as transformers saves it; some rewritten to the old key style)
  generation_config.json
  model.safetensors       (or model-0000i-of-0000n.safetensors + model.safetensors.index.json)
  reference.json          (prompt_ids, f32 logits, greedy tokens, ... computed by transformers)
and a README.md summarising them.

Weights are drawn with numpy's PCG64 from fixed seeds, so reruns give the same files.
The reference numbers come from Hugging Face transformers (run on the CPU in float32).
Every model is also recomputed by a small independent float64 implementation in this
file (own_forward); the differences are written into each reference.json's "checks".

Usage (needs torch, numpy and transformers >= 5; no network):
    python3 tests/reference/make_reference_models.py --out tests/reference/models
    python3 tests/reference/make_reference_models.py --out /tmp/m --no-hf   # no transformers:
        writes everything, but the reference numbers come from own_forward (for dry runs only)
"""

import argparse
import copy
import json
import math
import os
import shutil
import struct
import sys
import tempfile

import numpy as np
import torch

EMB_STD_TIED = 0.15  # embedding std of tied models (1.0 untied); larger makes random tied models loop
QKV_BIAS_STD = 0.1  # qwen2 q/k/v bias
PROMPT_LEN = 12
NEW_TOKENS = 20
BOS, EOS, PAD = 1, 2, 0
MIN_MARGIN = 0.02  # wanted gap between the best and second-best logit at each greedy step
MIN_ROUTER_GAP = 1e-3  # wanted gap between the k-th and (k+1)-th router probability (MoE)
MIN_DISTINCT = 10  # wanted number of different tokens among the 20 greedy ones
MAX_ATTEMPTS = 100  # prompts tried (fixed seeds) until these three wishes hold; else the best one

# ----------------------------------------------------------------------------------------
# Model specs
# ----------------------------------------------------------------------------------------

LLAMA = dict(arch="llama", vocab=320, hidden=128, layers=3, heads=8, kv_heads=2, head_dim=16,
             inter=192, tie=False, eps=1e-5, max_pos=2048,
             rope={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 64},
             seed=1001)
LLAMA_TIED = dict(arch="llama", vocab=256, hidden=64, layers=2, heads=4, kv_heads=4, head_dim=16,
                  inter=192, tie=True, eps=1e-6, max_pos=1024,
                  rope={"rope_type": "default", "rope_theta": 10000.0}, seed=1002)
QWEN2 = dict(arch="qwen2", vocab=320, hidden=96, layers=2, heads=6, kv_heads=2, head_dim=16,
             inter=224, tie=True, eps=1e-6, max_pos=4096,
             rope={"rope_type": "default", "rope_theta": 1000000.0}, seed=1003)
QWEN3 = dict(arch="qwen3", vocab=256, hidden=64, layers=3, heads=4, kv_heads=2, head_dim=32,
             inter=192, tie=False, eps=1e-6, max_pos=4096,
             rope={"rope_type": "default", "rope_theta": 1000000.0}, seed=1004)
QWEN3_MOE = dict(arch="qwen3_moe", vocab=256, hidden=64, layers=3, heads=4, kv_heads=2, head_dim=32,
                 inter=192, tie=False, eps=1e-6, max_pos=4096,
                 rope={"rope_type": "default", "rope_theta": 1000000.0},
                 experts=8, top_k=2, norm_topk=True, sparse_step=1, mlp_only=[1], moe_inter=64,
                 seed=1005)
QWEN3_MOE_B = dict(arch="qwen3_moe", vocab=256, hidden=64, layers=4, heads=4, kv_heads=1, head_dim=16,
                   inter=128, tie=True, eps=1e-6, max_pos=4096,
                   rope={"rope_type": "default", "rope_theta": 10000.0},
                   experts=8, top_k=2, norm_topk=False, sparse_step=2, mlp_only=[], moe_inter=64,
                   seed=1006)
QWEN2_G128 = dict(arch="qwen2", vocab=256, hidden=128, layers=2, heads=4, kv_heads=2, head_dim=32,
                  inter=256, tie=True, eps=1e-6, max_pos=4096,
                  rope={"rope_type": "default", "rope_theta": 1000000.0}, seed=1007)


def S(base, name, **kw):
    d = copy.deepcopy(base)
    d.update(name=name, storage=kw.pop("storage", "f32"), config_style=kw.pop("config_style", "new"),
             shard=kw.pop("shard", False), decode_logits=kw.pop("decode_logits", False),
             quant=kw.pop("quant", None), mlx_switch=kw.pop("mlx_switch", False))
    assert not kw, kw
    return d


SPECS = [
    S(LLAMA, "llama", shard=True, decode_logits=True),
    S(LLAMA_TIED, "llama_tied", config_style="old"),
    S(QWEN2, "qwen2"),
    S(QWEN3, "qwen3"),
    S(QWEN3_MOE, "qwen3_moe", decode_logits=True),
    S(QWEN3_MOE_B, "qwen3_moe_b", config_style="old"),
    S(LLAMA, "llama_bf16", storage="bf16"),
    S(QWEN3, "qwen3_bf16", storage="bf16"),
    S(QWEN3_MOE, "qwen3_moe_bf16", storage="bf16"),
    S(QWEN3, "qwen3_q4_g64", quant=dict(bits=4, group=64, dtype="bf16")),
    S(LLAMA, "llama_q8_g32", quant=dict(bits=8, group=32, dtype="f32"), config_style="old"),
    S(QWEN3_MOE, "qwen3_moe_q4_g32", quant=dict(bits=4, group=32, dtype="bf16")),
    S(QWEN3_MOE, "qwen3_moe_q4_g32_mlx", quant=dict(bits=4, group=32, dtype="bf16"), mlx_switch=True),
    S(QWEN2_G128, "qwen2_q4_g128", quant=dict(bits=4, group=128, dtype="f16")),
]

HF_TYPES = {"llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM"),
            "qwen3": ("qwen3", "Qwen3ForCausalLM"), "qwen3_moe": ("qwen3_moe", "Qwen3MoeForCausalLM")}
TORCH_DT = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
DT_NAME = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def is_moe_layer(spec, i):
    return (spec["arch"] == "qwen3_moe" and i not in spec["mlp_only"]
            and spec["experts"] > 0 and (i + 1) % spec["sparse_step"] == 0)


# ----------------------------------------------------------------------------------------
# Weights (canonical Hugging Face checkpoint names, float32 numpy)
# ----------------------------------------------------------------------------------------

def make_weights(spec):
    rng = np.random.default_rng(spec["seed"])
    H, D, nh, nkv = spec["hidden"], spec["head_dim"], spec["heads"], spec["kv_heads"]
    W = {}

    def lin(name, out, inn, gain=1.0):
        W[name] = (rng.standard_normal((out, inn)) * (gain / math.sqrt(inn))).astype(np.float32)

    def norm(name, n):
        W[name] = (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    def vec(name, n, std):
        W[name] = (std * rng.standard_normal(n)).astype(np.float32)

    emb_std = EMB_STD_TIED if spec["tie"] else 1.0
    W["model.embed_tokens.weight"] = (emb_std * rng.standard_normal((spec["vocab"], H))).astype(np.float32)
    for i in range(spec["layers"]):
        p = f"model.layers.{i}."
        norm(p + "input_layernorm.weight", H)
        norm(p + "post_attention_layernorm.weight", H)
        lin(p + "self_attn.q_proj.weight", nh * D, H)
        lin(p + "self_attn.k_proj.weight", nkv * D, H)
        lin(p + "self_attn.v_proj.weight", nkv * D, H)
        lin(p + "self_attn.o_proj.weight", H, nh * D)
        if spec["arch"] == "qwen2":
            vec(p + "self_attn.q_proj.bias", nh * D, QKV_BIAS_STD)
            vec(p + "self_attn.k_proj.bias", nkv * D, QKV_BIAS_STD)
            vec(p + "self_attn.v_proj.bias", nkv * D, QKV_BIAS_STD)
        if spec["arch"] in ("qwen3", "qwen3_moe"):
            norm(p + "self_attn.q_norm.weight", D)
            norm(p + "self_attn.k_norm.weight", D)
        if is_moe_layer(spec, i):
            lin(p + "mlp.gate.weight", spec["experts"], H, gain=2.0)
            for e in range(spec["experts"]):
                q = p + f"mlp.experts.{e}."
                lin(q + "gate_proj.weight", spec["moe_inter"], H)
                lin(q + "up_proj.weight", spec["moe_inter"], H)
                lin(q + "down_proj.weight", H, spec["moe_inter"])
        else:
            lin(p + "mlp.gate_proj.weight", spec["inter"], H)
            lin(p + "mlp.up_proj.weight", spec["inter"], H)
            lin(p + "mlp.down_proj.weight", H, spec["inter"])
    norm("model.norm.weight", H)
    if not spec["tie"]:
        lin("lm_head.weight", spec["vocab"], H, gain=3.0)
    return W


def round_to(a, dt):
    """float32 numpy -> (torch tensor in dtype dt, float32 numpy of the rounded values)."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(TORCH_DT[dt])
    return t, t.to(torch.float32).numpy()


# ----------------------------------------------------------------------------------------
# MLX affine quantization
# ----------------------------------------------------------------------------------------

def quantize(w, bits, group, dt):
    """w: float32 [..., out, in]. Returns (packed uint32 [..., out, in*bits/32], scales, biases
    as torch tensors in dtype dt [..., out, in/group], dequantized float32 numpy)."""
    assert w.shape[-1] % group == 0, (w.shape, group)
    assert 32 % bits == 0
    n = (1 << bits) - 1
    g = w.reshape(*w.shape[:-1], w.shape[-1] // group, group).astype(np.float32)
    wmin = g.min(-1)
    wmax = g.max(-1)
    scale = (wmax - wmin) / n
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # constant group: q = 0, w = bias
    scale_t, scale_r = round_to(scale, dt)
    bias_t, bias_r = round_to(wmin, dt)
    q = np.clip(np.rint((g - bias_r[..., None]) / scale_r[..., None]), 0, n).astype(np.uint32)
    deq = (scale_r[..., None] * q.astype(np.float32) + bias_r[..., None]).astype(np.float32)
    q = q.reshape(w.shape)
    per = 32 // bits
    qq = q.reshape(*w.shape[:-1], w.shape[-1] // per, per)
    packed = np.zeros(qq.shape[:-1], dtype=np.uint32)
    for j in range(per):
        packed |= qq[..., j] << np.uint32(bits * j)
    # round-trip check of the packing
    un = np.stack([(packed >> np.uint32(bits * j)) & np.uint32(n) for j in range(per)], -1)
    assert np.array_equal(un.reshape(w.shape), q)
    return packed, scale_t, bias_t, deq.reshape(w.shape)


def quantized_names(spec, W):
    names = []
    for k in W:
        if not k.endswith(".weight"):
            continue
        if "norm" in k or k.endswith("mlp.gate.weight"):
            continue  # norms and MoE routers stay unquantized
        names.append(k)
    return names


# ----------------------------------------------------------------------------------------
# On-disk tensors for one spec, and the float32 weights the reference must use
# ----------------------------------------------------------------------------------------

def build_tensors(spec):
    W = make_weights(spec)
    disk, ref = {}, {}
    st = spec["storage"]
    if spec["quant"] is None:
        for k, a in W.items():
            t, r = round_to(a, st)
            disk[k], ref[k] = t, r
        return disk, ref
    qc = spec["quant"]
    qnames = set(quantized_names(spec, W))
    for k, a in W.items():
        if k in qnames:
            packed, s, b, deq = quantize(a, qc["bits"], qc["group"], qc["dtype"])
            pre = k[: -len(".weight")]
            disk[pre + ".weight"], disk[pre + ".scales"], disk[pre + ".biases"] = packed, s, b
            ref[k] = deq
        else:
            t, r = round_to(a, qc["dtype"])
            disk[k], ref[k] = t, r
    if spec["mlx_switch"]:
        # mlx-lm layout for MoE experts: stacked [E, out, ...] under mlp.switch_mlp.*
        for i in range(spec["layers"]):
            if not is_moe_layer(spec, i):
                continue
            p = f"model.layers.{i}.mlp."
            for proj in ("gate_proj", "up_proj", "down_proj"):
                for suf in ("weight", "scales", "biases"):
                    parts = [disk.pop(f"{p}experts.{e}.{proj}.{suf}") for e in range(spec["experts"])]
                    if isinstance(parts[0], np.ndarray):
                        disk[f"{p}switch_mlp.{proj}.{suf}"] = np.stack(parts)
                    else:
                        disk[f"{p}switch_mlp.{proj}.{suf}"] = torch.stack(parts)
    return disk, ref


# ----------------------------------------------------------------------------------------
# safetensors writer (plain format; also read back by transformers on the device)
# ----------------------------------------------------------------------------------------

def tensor_bytes(t):
    if isinstance(t, np.ndarray):
        assert t.dtype == np.uint32
        return "U32", list(t.shape), np.ascontiguousarray(t).astype("<u4").tobytes()
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return "BF16", list(t.shape), t.view(torch.int16).numpy().astype("<i2").tobytes()
    if t.dtype == torch.float16:
        return "F16", list(t.shape), t.numpy().astype("<f2").tobytes()
    if t.dtype == torch.float32:
        return "F32", list(t.shape), t.numpy().astype("<f4").tobytes()
    raise TypeError(t.dtype)


def write_safetensors(path, tensors, fmt):
    header, blobs, off = {"__metadata__": {"format": fmt}}, [], 0
    for k in sorted(tensors):
        dt, shape, b = tensor_bytes(tensors[k])
        header[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    return off


def write_weights(d, tensors, shard, fmt):
    if not shard:
        write_safetensors(os.path.join(d, "model.safetensors"), tensors, fmt)
        return ["model.safetensors"]
    # two shards: layers of the first half (and embeddings) in shard 1, the rest in shard 2
    names = sorted(tensors)
    nl = max(int(k.split(".")[2]) for k in names if k.startswith("model.layers.")) + 1

    def which(k):
        if k.startswith("model.layers."):
            return 0 if int(k.split(".")[2]) < (nl + 1) // 2 else 1
        return 0 if k.startswith("model.embed_tokens") else 1

    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    total, wmap = 0, {}
    for s in range(2):
        part = {k: tensors[k] for k in names if which(k) == s}
        total += write_safetensors(os.path.join(d, files[s]), part, fmt)
        wmap.update({k: files[s] for k in part})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(wmap.items()))}, f, indent=2)
        f.write("\n")
    return files + ["model.safetensors.index.json"]


# ----------------------------------------------------------------------------------------
# Independent float64 implementation (cross-check of what transformers computes)
# ----------------------------------------------------------------------------------------

def inv_freq(spec):
    D = spec["head_dim"]
    rp = spec["rope"]
    inv = 1.0 / (rp["rope_theta"] ** (np.arange(0, D, 2, dtype=np.float64) / D))
    if rp["rope_type"] == "llama3":
        f, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
        old = rp["original_max_position_embeddings"]
        wl = 2 * math.pi / inv
        out = []
        for w_, f_ in zip(wl, inv):
            if w_ < old / hi:
                out.append(f_)
            elif w_ > old / lo:
                out.append(f_ / f)
            else:
                s = (old / w_ - lo) / (hi - lo)
                out.append((1 - s) * f_ / f + s * f_)
        inv = np.array(out)
    else:
        assert rp["rope_type"] == "default"
    return inv


def own_forward(spec, W, ids):
    """Returns (logits [T, V] float64, smallest gap between the k-th and (k+1)-th router
    probability over all MoE layers and tokens, or None)."""
    W = {k: v.astype(np.float64) for k, v in W.items()}
    T, H, D = len(ids), spec["heads"], spec["head_dim"]
    KV, eps = spec["kv_heads"], spec["eps"]
    x = W["model.embed_tokens.weight"][np.array(ids)]
    ang = np.arange(T, dtype=np.float64)[:, None] * inv_freq(spec)[None, :]
    ang = np.concatenate([ang, ang], -1)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rms(v, w):
        return v / np.sqrt(np.mean(v * v, -1, keepdims=True) + eps) * w

    def rope(v):
        rot = np.concatenate([-v[..., D // 2:], v[..., : D // 2]], -1)
        return v * cos + rot * sin

    def silu(v):
        return v / (1.0 + np.exp(-v))

    def mlp(h, p):
        return (silu(h @ W[p + "gate_proj.weight"].T) * (h @ W[p + "up_proj.weight"].T)) @ W[p + "down_proj.weight"].T

    mask = np.triu(np.full((T, T), -np.inf), 1)
    gap = None
    for i in range(spec["layers"]):
        p = f"model.layers.{i}."
        h = rms(x, W[p + "input_layernorm.weight"])
        qkv = []
        for n in ("q", "k", "v"):
            y = h @ W[p + f"self_attn.{n}_proj.weight"].T
            if p + f"self_attn.{n}_proj.bias" in W:
                y = y + W[p + f"self_attn.{n}_proj.bias"]
            qkv.append(y.reshape(T, -1, D))
        q, k, v = qkv
        if p + "self_attn.q_norm.weight" in W:
            q = rms(q, W[p + "self_attn.q_norm.weight"])
            k = rms(k, W[p + "self_attn.k_norm.weight"])
        q, k = rope(q), rope(k)
        o = np.zeros((T, H, D))
        for hh in range(H):
            kv = hh // (H // KV)
            s = q[:, hh] @ k[:, kv].T / math.sqrt(D) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            o[:, hh] = s @ v[:, kv]
        x = x + o.reshape(T, H * D) @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        if is_moe_layer(spec, i):
            r = h @ W[p + "mlp.gate.weight"].T
            pr = np.exp(r - r.max(-1, keepdims=True))
            pr /= pr.sum(-1, keepdims=True)
            out = np.zeros_like(h)
            K = spec["top_k"]
            for t in range(T):
                order = np.argsort(-pr[t], kind="stable")
                g = pr[t, order[K - 1]] - pr[t, order[K]]
                gap = g if gap is None else min(gap, g)
                wts = pr[t, order[:K]]
                if spec["norm_topk"]:
                    wts = wts / wts.sum()
                for e, wgt in zip(order[:K], wts):
                    out[t] += wgt * mlp(h[t:t + 1], p + f"mlp.experts.{e}.")[0]
            x = x + out
        else:
            x = x + mlp(h, p + "mlp.")
    x = rms(x, W["model.norm.weight"])
    lm = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    return x @ lm.T, gap


# ----------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------

def config_kwargs(spec):
    kw = dict(vocab_size=spec["vocab"], hidden_size=spec["hidden"], intermediate_size=spec["inter"],
              num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
              num_key_value_heads=spec["kv_heads"], hidden_act="silu",
              max_position_embeddings=spec["max_pos"], rms_norm_eps=spec["eps"],
              tie_word_embeddings=spec["tie"], bos_token_id=BOS, eos_token_id=EOS,
              rope_parameters=dict(spec["rope"]), attention_dropout=0.0, initializer_range=0.02,
              use_cache=True)
    a = spec["arch"]
    if a == "llama":
        kw.update(head_dim=spec["head_dim"], attention_bias=False, mlp_bias=False)
    elif a == "qwen2":
        assert spec["head_dim"] * spec["heads"] == spec["hidden"]
        kw.update(use_sliding_window=False)
    elif a == "qwen3":
        kw.update(head_dim=spec["head_dim"], attention_bias=False, use_sliding_window=False)
    elif a == "qwen3_moe":
        kw.update(head_dim=spec["head_dim"], attention_bias=False, use_sliding_window=False,
                  num_experts=spec["experts"], num_experts_per_tok=spec["top_k"],
                  norm_topk_prob=spec["norm_topk"], decoder_sparse_step=spec["sparse_step"],
                  mlp_only_layers=list(spec["mlp_only"]), moe_intermediate_size=spec["moe_inter"],
                  output_router_logits=False)
    return kw


def hf_config_dict(spec, hf):
    """config.json content as transformers saves it (dtype float32), or a hand-made
    equivalent when transformers is not used."""
    mt, cls = HF_TYPES[spec["arch"]]
    if hf is None:
        d = dict(config_kwargs(spec), model_type=mt, architectures=[cls], dtype="float32",
                 transformers_version="none (--no-hf dry run)")
        return d
    try:
        cfg = hf.AutoConfig.for_model(mt, **config_kwargs(spec))
    except AttributeError:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        cfg = CONFIG_MAPPING[mt](**config_kwargs(spec))
    cfg.architectures = [cls]
    with tempfile.TemporaryDirectory() as t:
        cfg.save_pretrained(t)
        with open(os.path.join(t, "config.json")) as f:
            d = json.load(f)
    # transformers leaves out some keys that equal its defaults; write them all explicitly
    for k, v in config_kwargs(spec).items():
        if k not in d and k != "rope_parameters":
            d[k] = v
    for k in ("hidden_size", "num_key_value_heads", "tie_word_embeddings", "vocab_size"):
        assert d[k] == config_kwargs(spec)[k], (k, d[k])
    return d


def to_old_style(cfg):
    cfg = dict(cfg)
    rp = dict(cfg.pop("rope_parameters", None) or {})
    theta = rp.pop("rope_theta", cfg.get("rope_theta"))
    rtype = rp.get("rope_type", "default")
    cfg["rope_theta"] = theta
    cfg["rope_scaling"] = None if rtype == "default" and set(rp) <= {"rope_type"} else rp
    if "num_experts" in cfg:
        cfg["num_local_experts"] = cfg.pop("num_experts")
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    return cfg


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


# ----------------------------------------------------------------------------------------
# Transformers runs
# ----------------------------------------------------------------------------------------

def hf_load(hf, d, dtype):
    model, info = hf.AutoModelForCausalLM.from_pretrained(
        d, dtype=dtype, attn_implementation="eager", output_loading_info=True)
    bad = {k: list(v) for k, v in info.items() if v and k != "error_msgs"}
    if info.get("error_msgs"):
        bad["error_msgs"] = list(info["error_msgs"])
    if "missing_keys" in bad:
        bad["missing_keys"] = [k for k in bad["missing_keys"] if k != "lm_head.weight"]
        if not bad["missing_keys"]:
            del bad["missing_keys"]
    if bad:
        raise RuntimeError(f"loading {d}: {bad}")
    model.eval()
    return model


@torch.no_grad()
def hf_run(hf, model, prompt):
    ids = torch.tensor([prompt])
    logits = model(input_ids=ids, use_cache=False).logits[0].float()
    # greedy with KV cache, step by step
    out = model(input_ids=ids, use_cache=True)
    pkv, steps, toks = out.past_key_values, [out.logits[0, -1].float()], []
    for i in range(NEW_TOKENS):
        tok = int(torch.argmax(steps[-1]))
        toks.append(tok)
        if i == NEW_TOKENS - 1:
            break
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=pkv, use_cache=True)
        pkv = out.past_key_values
        steps.append(out.logits[0, -1].float())
    # model.generate, eos disabled
    gc = hf.GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, bos_token_id=BOS,
                             eos_token_id=None, pad_token_id=PAD)
    model.generation_config = gc
    g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc,
                       output_logits=True, return_dict_in_generate=True)
    gen = g.sequences[0, len(prompt):].tolist()
    gen_logits = torch.stack([l[0].float() for l in g.logits]) if g.logits is not None else None
    return logits, torch.stack(steps), toks, gen, gen_logits


def rope_buffer(model):
    for n, b in model.named_buffers():
        if n.endswith("inv_freq"):
            return b.double().numpy()
    return None


# ----------------------------------------------------------------------------------------
# Output helpers
# ----------------------------------------------------------------------------------------

def fmt_rows(a):
    a = np.asarray(a, dtype=np.float64)
    assert np.all(np.isfinite(a))
    if a.ndim == 1:
        return "[" + ",".join(f"{v:.6g}" for v in a) + "]"
    return "[\n" + ",\n".join("    " + fmt_rows(r) for r in a) + "\n  ]"


def write_reference(path, ref):
    lines = []
    for k, v in ref.items():
        if k in ("logits", "decode_logits"):
            lines.append(f'  "{k}": ' + fmt_rows(v))
        else:
            lines.append(f"  {json.dumps(k)}: " + json.dumps(v, sort_keys=True))
    with open(path, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


def margins(rows):
    r = np.sort(np.asarray(rows, dtype=np.float64), -1)
    return r[:, -1] - r[:, -2]


def describe(spec):
    a = spec["arch"]
    s = (f"{a}: vocab {spec['vocab']}, hidden {spec['hidden']}, {spec['layers']} layers, "
         f"{spec['heads']} heads / {spec['kv_heads']} kv heads, head_dim {spec['head_dim']}"
         f"{' (!= hidden/heads)' if spec['head_dim'] * spec['heads'] != spec['hidden'] else ''}, "
         f"intermediate {spec['inter']}, {'tied' if spec['tie'] else 'untied'} embeddings, "
         f"rms_norm_eps {spec['eps']}, rope {json.dumps(spec['rope'], sort_keys=True)}")
    if a == "qwen2":
        s += ", q/k/v bias"
    if a in ("qwen3", "qwen3_moe"):
        s += ", q_norm/k_norm"
    if a == "qwen3_moe":
        moe = [i for i in range(spec["layers"]) if is_moe_layer(spec, i)]
        s += (f", {spec['experts']} experts top-{spec['top_k']}, norm_topk_prob {spec['norm_topk']}, "
              f"decoder_sparse_step {spec['sparse_step']}, mlp_only_layers {spec['mlp_only']}, "
              f"moe_intermediate_size {spec['moe_inter']}; MoE layers {moe}, dense layers "
              f"{[i for i in range(spec['layers']) if i not in moe]}")
    return s


# ----------------------------------------------------------------------------------------
# One model
# ----------------------------------------------------------------------------------------

def make_model(spec, out_root, hf, log):
    name = spec["name"]
    d = os.path.join(out_root, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    disk, refw = build_tensors(spec)

    cfg_new = hf_config_dict(spec, hf)
    if "rope_parameters" not in cfg_new:
        log(f"[{name}] WARNING: transformers did not write rope_parameters: {sorted(cfg_new)}")
    cfg_disk = dict(cfg_new)
    st = spec["quant"]["dtype"] if spec["quant"] else spec["storage"]
    if "dtype" in cfg_disk or "torch_dtype" not in cfg_disk:
        cfg_disk["dtype"] = DT_NAME[st]
    else:
        cfg_disk["torch_dtype"] = DT_NAME[st]
    if spec["quant"]:
        q = {"group_size": spec["quant"]["group"], "bits": spec["quant"]["bits"]}
        cfg_disk["quantization"] = dict(q)
        cfg_disk["quantization_config"] = dict(q)
    if spec["config_style"] == "old":
        cfg_disk = to_old_style(cfg_disk)
    write_json(os.path.join(d, "config.json"), cfg_disk)
    gen_cfg = {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD, "do_sample": False}
    if hf is not None:
        g = hf.GenerationConfig(**gen_cfg)
        g.save_pretrained(d)
    else:
        write_json(os.path.join(d, "generation_config.json"), gen_cfg)
    files = write_weights(d, disk, spec["shard"], "mlx" if spec["quant"] else "pt")

    checks, notes = {}, []
    # the float32 weights the reference uses, in plain HF layout, with the new-style config
    refdir = tempfile.mkdtemp(prefix=f"ref_{name}_")
    ref_cfg = dict(cfg_new)
    write_json(os.path.join(refdir, "config.json"), ref_cfg)
    write_safetensors(os.path.join(refdir, "model.safetensors"),
                      {k: torch.from_numpy(v) for k, v in refw.items()}, "pt")

    best = None
    for attempt in range(MAX_ATTEMPTS):
        rng = np.random.default_rng(spec["seed"] * 100 + attempt)
        prompt = [BOS] + [int(t) for t in rng.integers(3, spec["vocab"], PROMPT_LEN - 1)]
        own, gap = own_forward(spec, refw, prompt)
        # greedy continuation by the float64 implementation (full recompute each step)
        seq = list(prompt)
        rows = []
        for _ in range(NEW_TOKENS):
            lg, g2 = own_forward(spec, refw, seq)
            rows.append(lg[-1])
            seq.append(int(np.argmax(lg[-1])))
            if g2 is not None:
                gap = min(gap, g2)
        m = float(margins(rows).min())
        # score >= 1: greedy margin >= MIN_MARGIN and router top-k gap >= MIN_ROUTER_GAP
        # and at least MIN_DISTINCT different tokens among the greedy ones (random models like to loop)
        score = min(m / MIN_MARGIN, math.inf if gap is None else gap / MIN_ROUTER_GAP,
                    len(set(seq[len(prompt):])) / MIN_DISTINCT)
        cand = (score, m, attempt, prompt, own, seq[len(prompt):], np.array(rows), gap)
        if best is None or score > best[0]:
            best = cand
        if score >= 1:
            break
    _, m, attempt, prompt, own, own_toks, own_rows, gap = best
    checks["prompt_attempt"] = attempt
    checks["f64_min_greedy_margin"] = m
    if gap is not None:
        checks["f64_min_router_topk_gap"] = float(gap)

    ref = {"prompt_ids": prompt}
    if hf is None:
        ref["logits"] = own.astype(np.float32)
        ref["greedy_tokens"] = own_toks
        if spec["decode_logits"]:
            ref["decode_logits"] = own_rows.astype(np.float32)
        ref["dtype"] = "float64 own implementation (DRY RUN, not a transformers reference)"
    else:
        model = hf_load(hf, refdir, torch.float32)
        logits, steps, toks, gen, gen_logits = hf_run(hf, model, prompt)
        if gen != toks:
            notes.append(f"WARNING generate() gave {gen}, the KV-cache loop gave {toks}")
        if len(gen) != NEW_TOKENS:
            raise RuntimeError(f"{name}: generate gave {len(gen)} tokens")
        ref["logits"] = logits.numpy()
        ref["greedy_tokens"] = gen
        if spec["decode_logits"]:
            ref["decode_logits"] = (gen_logits if gen_logits is not None else steps).numpy()
        ref["dtype"] = "float32"
        checks["hf_f32_vs_own_f64_max_abs_prompt_logits"] = float(np.abs(logits.numpy() - own).max())
        checks["hf_f32_decode_vs_own_f64_max_abs"] = float(np.abs(steps.numpy() - own_rows).max())
        if gen_logits is not None:
            checks["hf_generate_logits_vs_kv_loop_max_abs"] = float((gen_logits - steps).abs().max())
        checks["greedy_tokens_match_own_f64"] = gen == own_toks
        checks["hf_f32_min_greedy_margin"] = float(margins(steps.numpy()).min())
        hb = rope_buffer(model)
        if hb is not None:
            checks["hf_inv_freq_vs_own_max_rel"] = float(np.abs(hb / inv_freq(spec) - 1).max())
        if not gen == own_toks or checks["hf_f32_vs_own_f64_max_abs_prompt_logits"] > 1e-3:
            log(f"[{name}] WARNING transformers and own_forward disagree: {checks}")
        # the files as written, read by transformers
        try:
            if spec["quant"]:
                raise RuntimeError("MLX-quantized checkpoint: transformers cannot read it (expected)")
            m2 = hf_load(hf, d, torch.float32)
            with torch.no_grad():
                l2 = m2(input_ids=torch.tensor([prompt]), use_cache=False).logits[0].float()
            checks["hf_reads_written_dir"] = True
            checks["hf_written_dir_max_abs_diff"] = float((l2 - logits).abs().max())
            del m2
        except Exception as e:  # noqa: BLE001
            checks["hf_reads_written_dir"] = f"no: {type(e).__name__}: {str(e)[:300]}"
        if spec["storage"] == "bf16":
            try:
                mb = hf_load(hf, d, torch.bfloat16)
                _, _, _, genb, _ = hf_run(hf, mb, prompt)
                ref["bf16_native_greedy_tokens"] = genb
                same = 0
                while same < NEW_TOKENS and genb[same] == gen[same]:
                    same += 1
                checks["bf16_native_matching_prefix"] = same
            except Exception as e:  # noqa: BLE001
                checks["bf16_native"] = f"failed: {type(e).__name__}: {str(e)[:300]}"
        del model
    shutil.rmtree(refdir, ignore_errors=True)

    # notes
    notes.insert(0, describe(spec) + ".")
    if spec["quant"]:
        qc = spec["quant"]
        lay = ("experts stacked mlx-lm style: model.layers.L.mlp.switch_mlp.{gate,up,down}_proj."
               "{weight,scales,biases} with shapes [E, out, in*bits/32] / [E, out, in/group]"
               if spec["mlx_switch"] else "HF per-expert names (mlp.experts.E.*)")
        notes.append(
            f"MLX affine quantization, bits {qc['bits']}, group_size {qc['group']}, scales/biases and all "
            f"unquantized tensors in {DT_NAME[qc['dtype']]}. Quantized: embed_tokens"
            f"{'' if spec['tie'] else ', lm_head'} and every decoder Linear; NOT quantized: norms"
            f"{', MoE routers (mlp.gate, kept in ' + DT_NAME[qc['dtype']] + ')' if spec['arch'] == 'qwen3_moe' else ''}"
            f"{', q/k/v .bias vectors' if spec['arch'] == 'qwen2' else ''}. "
            f"weight = uint32 codes packed LSB-first; dequant w = scales*q + biases (computed in f32 from the "
            f"stored {DT_NAME[qc['dtype']]} scales/biases). MoE experts: {lay if spec['arch'] == 'qwen3_moe' else 'n/a'}. "
            f"Reference = transformers f32 on the dequantized weights.")
    elif spec["storage"] == "bf16":
        notes.append("Weights stored in bfloat16; reference logits = transformers float32 on the bf16-rounded "
                     "weights (bf16 values upcast exactly). bf16_native_greedy_tokens (informational) = "
                     "transformers run in bfloat16 on the CPU.")
    else:
        notes.append("Weights stored in float32.")
    if spec["config_style"] == "old":
        notes.append("config.json rewritten to the OLD key style: rope_theta + rope_scaling top-level, "
                     "torch_dtype" + (", num_local_experts instead of num_experts" if spec["arch"] == "qwen3_moe" else "")
                     + "; no rope_parameters.")
    else:
        notes.append("config.json in transformers-5 style (rope_parameters).")
    if spec["shard"]:
        notes.append("Weights sharded in 2 files with model.safetensors.index.json.")
    notes.append(f"Prompt starts with bos {BOS}; greedy_tokens from model.generate(do_sample=False, "
                 f"max_new_tokens={NEW_TOKENS}) with eos disabled (generation_config.json has eos {EOS}; ignore it "
                 f"when comparing). Attention 'eager', CPU.")
    if spec["decode_logits"]:
        notes.append("decode_logits[i] = logits that produced greedy_tokens[i] (i=0: last prompt position after "
                     "prefill; i>0: one-token decode steps on the KV cache), from generate(output_logits=True).")
    ref["notes"] = " ".join(notes)
    ref["config_style"] = spec["config_style"]
    ref["files"] = files
    ref["checks"] = checks
    write_reference(os.path.join(d, "reference.json"), ref)
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    log(f"[{name}] {size / 1024:.0f} KiB, attempt {attempt}, checks {json.dumps(checks, sort_keys=True)}")
    return size


# ----------------------------------------------------------------------------------------
# README
# ----------------------------------------------------------------------------------------

def write_readme(out_root, sizes, hf_version):
    L = ["# Reference models", "",
         "Tiny random-weight checkpoints with logits and greedy tokens computed by Hugging Face transformers "
         f"({hf_version}, CPU, float32, eager attention). Made by `tests/reference/make_reference_models.py` "
         "(fixed seeds; see its docstring for how to rerun). Tests compare the engine against `reference.json`: "
         "max |logit error| < 1e-3 in f32 and identical greedy tokens.", "",
         "Each folder: `config.json`, `generation_config.json`, `model.safetensors` (or shards + "
         "`model.safetensors.index.json`), `reference.json` with `prompt_ids` (12), `logits` [12][vocab], "
         "`greedy_tokens` (20, eos disabled), `dtype`, `notes`, `config_style`, `files`, `checks` "
         "(self-checks: transformers f32 vs an independent f64 implementation in the script, greedy margins, "
         "router top-k gaps), and for some models `decode_logits` [20][vocab] and `bf16_native_greedy_tokens`. "
         "Floats are rounded to 6 significant digits.", "",
         "| model | arch | vocab/hidden/layers | heads/kv/head_dim | storage | config keys | exercises |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in SPECS:
        ex = []
        if s["heads"] != s["kv_heads"]:
            ex.append(f"GQA {s['heads'] // s['kv_heads']}:1")
        else:
            ex.append("MHA")
        if s["head_dim"] * s["heads"] != s["hidden"]:
            ex.append("head_dim != hidden/heads")
        ex.append("tied" if s["tie"] else "untied")
        if s["rope"]["rope_type"] != "default":
            ex.append(f"{s['rope']['rope_type']} rope scaling")
        ex.append(f"rope_theta {s['rope']['rope_theta']:g}")
        if s["arch"] == "qwen2":
            ex.append("qkv bias")
        if s["arch"] in ("qwen3", "qwen3_moe"):
            ex.append("q/k norm")
        if s["arch"] == "qwen3_moe":
            ex.append(f"MoE {s['experts']}x top-{s['top_k']} norm_topk_prob={s['norm_topk']} "
                      f"sparse_step={s['sparse_step']} mlp_only={s['mlp_only']} moe_inter={s['moe_inter']}")
        if s["shard"]:
            ex.append("2 shards")
        if s["decode_logits"]:
            ex.append("decode_logits")
        if s["mlx_switch"]:
            ex.append("mlx-lm switch_mlp stacked experts")
        if s["quant"]:
            st = f"MLX q{s['quant']['bits']} g{s['quant']['group']}, {DT_NAME[s['quant']['dtype']]} scales"
        else:
            st = DT_NAME[s["storage"]]
        cs = "old (rope_theta/rope_scaling" + (", num_local_experts" if s["arch"] == "qwen3_moe" else "") + ")" \
            if s["config_style"] == "old" else "new (rope_parameters)"
        L.append(f"| {s['name']} | {s['arch']} | {s['vocab']}/{s['hidden']}/{s['layers']} | "
                 f"{s['heads']}/{s['kv_heads']}/{s['head_dim']} | {st} | {cs} | {', '.join(ex)} |")
    L += ["", "Notes:",
          "- bf16 models: weights stored in bf16; the reference is float32 math on the bf16-rounded weights, "
          "so the same 1e-3 tolerance applies. `bf16_native_greedy_tokens` is informational only.",
          "- MLX-quantized models: `<prefix>.weight` uint32 codes [out, in*bits/32] packed least-significant "
          "bits first, `<prefix>.scales` / `<prefix>.biases` [out, in/group]; dequant w = scales*q + biases. "
          "config.json has `quantization` and `quantization_config` = {group_size, bits}. Embeddings, lm_head "
          "(when untied) and all decoder Linears are quantized; norms, qwen2 q/k/v `.bias` vectors and MoE routers "
          "(`mlp.gate`) are not (a layer is quantized iff `<prefix>.scales` exists). The reference is transformers "
          "float32 on the dequantized weights (dequantized in f32 from the stored scales/biases). "
          "Quantization per group: scale = (max-min)/(2^bits-1), bias = min, q = clip(round((w-bias)/scale)). "
          "transformers itself cannot open these folders (no quant_method in quantization_config).",
          "- `qwen3_moe_q4_g32` keeps HF per-expert names (`mlp.experts.E.{gate,up,down}_proj.*`); "
          "`qwen3_moe_q4_g32_mlx` has the same numbers in mlx-lm's layout (`mlp.switch_mlp.{proj}.*` "
          "stacked [E, ...]) and the same reference.",
          "- Old-style configs (`config_style: old`): `rope_theta` + `rope_scaling` top level, `torch_dtype`; "
          "`qwen3_moe_b` also uses `num_local_experts` instead of `num_experts`. The reference for those was "
          "computed from the equivalent new-style config; transformers 5.17 also reads the old-style folders "
          "and gives identical logits (`checks.hf_reads_written_dir`).",
          "- generation_config.json says eos 2; the greedy references ignore eos (exactly 20 tokens). Token 2 "
          "does occur in some greedy_tokens (e.g. qwen3_q4_g64, qwen3_bf16), so tests must disable eos.",
          "- The 12-token prompt of each model was picked (from fixed seeds) so that every greedy step has a "
          "top-1/top-2 logit gap of at least 0.02 where possible (see `checks.hf_f32_min_greedy_margin`), MoE "
          "router top-k choices are not near ties (`checks.f64_min_router_topk_gap`) and the continuation does "
          "not just loop on one token. Random tiny models still repeat tokens sometimes.",
          "- `checks` also records: transformers f32 vs the script's own float64 implementation "
          "(`hf_f32_vs_own_f64_max_abs_prompt_logits`, a few 1e-6), generate() logits vs a hand-driven KV-cache "
          "loop, transformers' rope inv_freq vs the script's, and whether transformers reads the folder as "
          "written (`hf_reads_written_dir`; old-style configs included).",
          "",
          "Regenerate (needs torch, numpy and transformers 5; no network, a few minutes on a CPU): "
          "`python3 tests/reference/make_reference_models.py --out tests/reference/models`. "
          "Check a folder set without transformers (numpy only: reads config.json in either key style, the "
          "safetensors, dequantizes, recomputes in float64 and compares with reference.json): "
          "`python3 tests/reference/make_reference_models.py --out tests/reference/models --verify`.",
          "", "Sizes:", ""]
    tot = 0
    for s in SPECS:
        if s["name"] in sizes:
            L.append(f"- {s['name']}: {sizes[s['name']] / 1024:.0f} KiB")
            tot += sizes[s["name"]]
    L.append(f"- total: {tot / 1024 / 1024:.2f} MiB")
    with open(os.path.join(out_root, "README.md"), "w") as f:
        f.write("\n".join(L) + "\n")



# ----------------------------------------------------------------------------------------
# --verify: read the written folders back without transformers (numpy only) and check them
# ----------------------------------------------------------------------------------------

def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        b = data[v["data_offsets"][0]: v["data_offsets"][1]]
        if v["dtype"] == "BF16":
            a = (np.frombuffer(b, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(b, {"F32": "<f4", "F16": "<f2", "U32": "<u4"}[v["dtype"]])
        out[k] = a.reshape(v["shape"])
    return out, header.get("__metadata__")


def spec_from_config(c):
    """What an engine must read from config.json, new or old key style."""
    rp = c.get("rope_parameters")
    if rp is None:
        rp = dict(c.get("rope_scaling") or {})
        rp["rope_theta"] = c["rope_theta"]
    rp = dict(rp)
    rp.setdefault("rope_type", rp.get("type", "default"))
    arch = c["model_type"]
    s = dict(arch=arch, vocab=c["vocab_size"], hidden=c["hidden_size"], layers=c["num_hidden_layers"],
             heads=c["num_attention_heads"], kv_heads=c["num_key_value_heads"],
             head_dim=c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"],
             eps=c["rms_norm_eps"], rope=rp, tie=c.get("tie_word_embeddings", False))
    if arch == "qwen3_moe":
        s.update(experts=c.get("num_experts", c.get("num_local_experts")), top_k=c["num_experts_per_tok"],
                 norm_topk=c["norm_topk_prob"], sparse_step=c["decoder_sparse_step"],
                 mlp_only=c.get("mlp_only_layers") or [])
    return s


def verify(root):
    ok = True
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.isdir(d):
            continue
        c = json.load(open(os.path.join(d, "config.json")))
        json.load(open(os.path.join(d, "generation_config.json")))
        ref = json.load(open(os.path.join(d, "reference.json")))
        spec = spec_from_config(c)
        raw, metas = {}, []
        idx = os.path.join(d, "model.safetensors.index.json")
        files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) \
            else ["model.safetensors"]
        for fn in files:
            t, m = read_safetensors(os.path.join(d, fn))
            raw.update(t)
            metas.append(m)
        q = c.get("quantization")
        W = {}
        for k, a in raw.items():
            if k.endswith(".scales") or k.endswith(".biases"):
                continue
            pre = k.rsplit(".", 1)[0]
            if k.endswith(".weight") and pre + ".scales" in raw:
                bits, G = q["bits"], q["group_size"]
                per, n = 32 // bits, (1 << bits) - 1
                codes = np.stack([(a >> np.uint32(bits * j)) & np.uint32(n) for j in range(per)], -1)
                codes = codes.reshape(*a.shape[:-1], a.shape[-1] * per).astype(np.float32)
                sc, bi = raw[pre + ".scales"], raw[pre + ".biases"]
                g = codes.reshape(*sc.shape, G) * sc[..., None] + bi[..., None]
                a = g.reshape(codes.shape)
            W[k] = a.astype(np.float32)
        for k in [k for k in W if ".switch_mlp." in k]:
            a = W.pop(k)
            for e in range(a.shape[0]):
                W[k.replace(".switch_mlp.", f".experts.{e}.")] = a[e]
        prompt = ref["prompt_ids"]
        seq, rows = list(prompt), []
        for _ in range(len(ref["greedy_tokens"])):
            lg, _ = own_forward(spec, W, seq)
            if len(seq) == len(prompt):
                full = lg
            rows.append(lg[-1])
            seq.append(int(np.argmax(lg[-1])))
        err = float(np.abs(full - np.array(ref["logits"])).max())
        same = seq[len(prompt):] == ref["greedy_tokens"]
        derr = float(np.abs(np.array(rows) - np.array(ref["decode_logits"])).max()) if "decode_logits" in ref else None
        good = err < 1e-3 and same and (derr is None or derr < 1e-3) and len(prompt) == PROMPT_LEN \
            and np.array(ref["logits"]).shape == (PROMPT_LEN, spec["vocab"])
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {name:22s} files {files} meta {metas} max|logit err| {err:.2e} "
              f"decode {derr if derr is None else f'{derr:.2e}'} greedy same {same} dtype {ref['dtype']}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "models"))
    ap.add_argument("--only", default="", help="comma-separated model names")
    ap.add_argument("--no-hf", action="store_true", help="dry run without transformers")
    ap.add_argument("--verify", action="store_true",
                    help="only re-read the folders under --out (numpy, no transformers) and check reference.json")
    a = ap.parse_args()
    if a.verify:
        return 0 if verify(a.out) else 1
    torch.manual_seed(0)
    torch.set_num_threads(1)
    hf = None
    version = "none"
    if not a.no_hf:
        import transformers as hf  # noqa: F811
        version = f"transformers {hf.__version__}, torch {torch.__version__}"
        try:
            hf.logging.set_verbosity_error()
        except Exception:  # noqa: BLE001
            pass
    os.makedirs(a.out, exist_ok=True)
    only = set(x for x in a.only.split(",") if x)
    sizes, failed = {}, []

    def log(msg):
        print(msg, flush=True)

    log(f"using {version}")
    for spec in SPECS:
        if only and spec["name"] not in only:
            continue
        try:
            sizes[spec["name"]] = make_model(spec, a.out, hf, log)
        except Exception as e:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            failed.append(spec["name"])
            log(f"[{spec['name']}] FAILED: {type(e).__name__}: {e}")
    if not only:
        write_readme(a.out, sizes, version)
    log(f"done: {len(sizes)} models, {sum(sizes.values()) / 1024 / 1024:.2f} MiB, failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
