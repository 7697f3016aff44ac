#!/usr/bin/env python3
"""LoRA / DoRA / full fine-tuning reference numbers for Granary's training tests, from transformers + peft.

Run on the GPU machine, from the repository root (its plain python3 is /opt/torch/.venv/bin/python3, which holds
torch, transformers and peft; elsewhere activate such a venv first: source /opt/torch/.venv/bin/activate). Only the
variants added after the first run (a minute or two on the CPU, deterministic):

    python3 tests/reference/training/make_training_reference.py --only qwen3_moe_experts qwen3_dora

It writes tests/reference/training/{qwen3_moe_experts,qwen3_dora}.{json,safetensors} and merges their entries into
index.json (entries of models not run are kept). With no --only it redoes every model and variant.

For each tiny model under tests/reference/models (see MODELS) and each variant (see VARIANTS) this writes, into --out:
  <name>.safetensors  f32 tensors:
      lora_init/<module>.lora_A [r, in], lora_init/<module>.lora_B [out, r]   (set from a fixed seed; peft would zero B)
      lora_grad/<module>.lora_A|B      gradient of the mean masked cross-entropy, torch f32
      lora_grad64/<module>.lora_A|B    the same computed in float64 (how exact the f32 numbers are)
      lora_adamw/<module>.lora_A|B     the adapters after ADAMW_STEPS torch.optim.AdamW steps
      DoRA variants add <module>.lora_magnitude [out] (peft's lora_magnitude_vector) to each of the four groups.
      full_grad/<hf parameter name>    gradient w.r.t. every base weight (full fine-tuning, no adapters), f32
                                       (plain models only)
  <name>.json  loss, loss64, the batch (input_ids, labels), LoRA and AdamW settings, losses along the AdamW
               steps, versions and self-checks.
<module> is the Hugging Face module path in the per-expert (transformers v4) layout that Granary uses, e.g.
model.layers.0.self_attn.q_proj, model.layers.0.mlp.gate (the MoE router), model.layers.0.mlp.experts.3.up_proj.

Conventions (as transformers computes them): labels are aligned with input_ids and shifted inside the model;
-100 is ignored; the loss is the mean over the remaining target tokens of the whole batch. The batch is
right-padded with no attention mask (causal attention keeps padding out of earlier positions; padded
positions carry label -100). LoRA: y = W x + (alpha / r) * B A x, dropout 0. DoRA (peft use_dora):
y = m / ||W + s B A||_row * (W x + s B A x) + b with the norm detached.

Variant qwen3_moe_experts (LoRA through the router's top-k): transformers 5 fuses a layer's experts into
mlp.experts.gate_up_proj [E, 2I, H] (gate rows first) and mlp.experts.down_proj [E, H, I], and peft adapts them with
lora.ParamWrapper: A [R*E, in] (row e*R + k), B [out, R*E] (column k*E + e), expert e's delta scale * B_e A_e. The
script targets the parameters explicitly (attention modules, mlp.gate.weight, both expert tensors) and gives
gate_up_proj rank 2r and alpha 2*alpha, as peft's own v4->v5 conversion does, with B held block-diagonal (gate rows
use rank slots 0..r-1, up rows r..2r-1; a gradient hook zeroes the other entries, so AdamW keeps them zero). That is
exactly a rank-r adapter of its own on every expert's gate_proj, up_proj and down_proj (peft's v4 layout, mlx_lm's
per-expert adapters), which is how the tensors are written. The layer of mlp_only_layers keeps its dense MLP
unadapted (peft maps the projection names onto the experts only); Granary's keys are in lora.granary_keys.

MLX-quantized models (QLoRA) are rebuilt in transformers from config.json with the weights dequantized in
f32 (w = scales * q + biases), the same way tests/reference/models was verified.

Usage for every model (torch, numpy, transformers >= 5, peft; CPU, deterministic, a few minutes):
    python3 tests/reference/training/make_training_reference.py --models tests/reference/models \
        --out tests/reference/training
"""

import argparse
import json
import os
import struct
import sys
import traceback

import numpy as np
import torch

MODELS = ["llama", "qwen2", "qwen3", "qwen3_moe", "qwen3_q4_g64", "llama_tied"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8.0
BATCH, LENGTH = 2, 12
PROMPT_MASKED = 4  # the first 4 labels of row 0 are -100 (a masked prompt)
ROW1_LENGTH = 8  # row 1 is right-padded from here with PAD, label -100
PAD = 0
SEED = 7
ADAMW = dict(lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
ADAMW_STEPS = 5

# Other adapters on a model of MODELS: name -> (model folder, what to adapt).
VARIANTS = {
    "qwen3_moe_experts": dict(model="qwen3_moe", experts=True, dora=False),
    "qwen3_dora": dict(model="qwen3", experts=False, dora=True),
}
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
EXPERT_PARAMETERS = ["mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
GRANARY_EXPERT_KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate",
                       "mlp.experts.gate_proj", "mlp.experts.up_proj", "mlp.experts.down_proj"]


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
    return out


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def dequantized_state(d, cfg):
    files = [f for f in sorted(os.listdir(d)) if f.endswith(".safetensors")]
    raw = {}
    for f in files:
        raw.update(read_safetensors(os.path.join(d, f)))
    q = cfg.get("quantization") or cfg.get("quantization_config")
    bits, group = q["bits"], q["group_size"]
    out = {}
    for k, v in raw.items():
        if k.endswith(".scales") or k.endswith(".biases"):
            continue
        prefix = k[: -len(".weight")] if k.endswith(".weight") else None
        if prefix is not None and prefix + ".scales" in raw:
            codes = v.astype(np.uint64)
            per = 32 // bits
            shifts = (np.arange(per, dtype=np.uint64) * bits)
            vals = ((codes[..., None] >> shifts) & ((1 << bits) - 1)).reshape(*v.shape[:-1], v.shape[-1] * per)
            scales = raw[prefix + ".scales"].astype(np.float32)
            biases = raw[prefix + ".biases"].astype(np.float32)
            w = vals.astype(np.float32).reshape(*vals.shape[:-1], -1, group)
            w = w * scales[..., None] + biases[..., None]
            out[k] = torch.from_numpy(np.ascontiguousarray(w.reshape(vals.shape), dtype=np.float32))
        else:
            out[k] = torch.from_numpy(np.array(v, dtype=np.float32))
    return out


def load_model(transformers, d):
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    if "quantization" not in cfg and "quantization_config" not in cfg:
        kwargs = dict(dtype=torch.float32, attn_implementation="eager")
        if "num_experts" in cfg:
            # The per-expert loop: grouped_mm has no float64 kernel on the CPU.
            kwargs["experts_implementation"] = "eager"
        model = transformers.AutoModelForCausalLM.from_pretrained(d, **kwargs)
        return model, cfg
    plain = {k: v for k, v in cfg.items() if k not in ("quantization", "quantization_config", "architectures",
                                                         "transformers_version", "model_type")}
    config = transformers.AutoConfig.for_model(cfg["model_type"], **plain)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    state = dequantized_state(d, cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and cfg.get("tie_word_embeddings"))]
    if missing or unexpected:
        raise RuntimeError(f"{d}: missing {missing}, unexpected {unexpected}")
    if cfg.get("tie_word_embeddings"):
        model.tie_weights()
    return model, cfg


def make_batch(vocab):
    rng = np.random.Generator(np.random.PCG64(SEED))
    ids = rng.integers(3, vocab, size=(BATCH, LENGTH)).astype(np.int64)
    labels = ids.copy()
    labels[0, :PROMPT_MASKED] = -100
    ids[1, ROW1_LENGTH:] = PAD
    labels[1, ROW1_LENGTH:] = -100
    return ids, labels


def lora_parameters(model):
    """{module path: (A parameter, B parameter)} in a stable order."""
    found = {}
    for name, p in model.named_parameters():
        for part in ("lora_A", "lora_B"):
            tag = f".{part}."
            if tag in name:
                module = name.split(tag)[0]
                module = module[len("base_model.model."):] if module.startswith("base_model.model.") else module
                found.setdefault(module, {})[part] = p
    return {m: (v["lora_A"], v["lora_B"]) for m, v in sorted(found.items())}


def init_lora(params):
    rng = np.random.Generator(np.random.PCG64(SEED + 1))
    init = {}
    with torch.no_grad():
        for module, (a, b) in params.items():
            av = rng.standard_normal(a.shape).astype(np.float32) / np.sqrt(a.shape[1])
            bv = rng.standard_normal(b.shape).astype(np.float32) * 0.05
            a.copy_(torch.from_numpy(av))
            b.copy_(torch.from_numpy(bv))
            init[module] = (av, bv)
    return init


def loss_of(model, ids, labels):
    return model(input_ids=torch.from_numpy(ids), labels=torch.from_numpy(labels), use_cache=False).loss


def run_model(transformers, peft, models_dir, name, out_dir):
    d = os.path.join(models_dir, name)
    tensors, checks = {}, {}

    # Full fine-tuning gradients of every base weight.
    model, cfg = load_model(transformers, d)
    model.train()
    ids, labels = make_batch(cfg["vocab_size"])
    model.zero_grad()
    full_loss = loss_of(model, ids, labels)
    full_loss.backward()
    for pname, p in model.named_parameters():
        if p.grad is not None:
            tensors[f"full_grad/{pname}"] = p.grad.detach().numpy().copy()
    checks["full_parameter_names"] = [n for n, _ in model.named_parameters()]

    # LoRA.
    model, _ = load_model(transformers, d)
    model.train()
    lcfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, bias="none")
    pm = peft.get_peft_model(model, lcfg)
    params = lora_parameters(pm)
    init = init_lora(params)
    for module, (av, bv) in init.items():
        tensors[f"lora_init/{module}.lora_A"] = av
        tensors[f"lora_init/{module}.lora_B"] = bv
    scaling = {m: float(mod.scaling["default"]) for m, mod in
               ((n[len("base_model.model."):], mod) for n, mod in pm.named_modules() if hasattr(mod, "scaling")
                and isinstance(getattr(mod, "scaling"), dict) and "default" in mod.scaling)}

    pm.zero_grad()
    loss = loss_of(pm, ids, labels)
    loss.backward()
    for module, (a, b) in params.items():
        tensors[f"lora_grad/{module}.lora_A"] = a.grad.detach().numpy().copy()
        tensors[f"lora_grad/{module}.lora_B"] = b.grad.detach().numpy().copy()

    # The same in float64, to tell how exact the f32 gradients are.
    pm64 = pm.double()
    pm64.zero_grad()
    try:
        objective64 = loss_of(pm64, ids, labels)
        objective64.backward()
        loss64 = float(objective64)
        worst = 0.0
        for module, (a, b) in params.items():
            for part, p in (("lora_A", a), ("lora_B", b)):
                g64 = p.grad.detach().numpy().copy()
                tensors[f"lora_grad64/{module}.{part}"] = g64
                g32 = tensors[f"lora_grad/{module}.{part}"]
                worst = max(worst, float(np.linalg.norm(g32 - g64) / max(np.linalg.norm(g64), 1e-30)))
        checks["max_relative_error_f32_vs_f64_lora_grad"] = worst
    except RuntimeError as e:
        loss64 = None
        checks["float64_error"] = str(e)
    pm = pm64.float()

    # AdamW from the same initial adapters.
    with torch.no_grad():
        for module, (a, b) in params.items():
            a.copy_(torch.from_numpy(init[module][0]))
            b.copy_(torch.from_numpy(init[module][1]))
    trainable = [p for pair in params.values() for p in pair]
    frozen_ok = all(not p.requires_grad for n, p in pm.named_parameters() if "lora_" not in n)
    checks["only_lora_trainable"] = frozen_ok
    opt = torch.optim.AdamW(trainable, **ADAMW)
    losses = []
    for _ in range(ADAMW_STEPS):
        opt.zero_grad()
        step_loss = loss_of(pm, ids, labels)
        losses.append(float(step_loss))
        step_loss.backward()
        opt.step()
    with torch.no_grad():
        losses.append(float(loss_of(pm, ids, labels)))
    for module, (a, b) in params.items():
        tensors[f"lora_adamw/{module}.lora_A"] = a.detach().numpy().copy()
        tensors[f"lora_adamw/{module}.lora_B"] = b.detach().numpy().copy()

    write_safetensors(os.path.join(out_dir, f"{name}.safetensors"), tensors)
    summary = dict(
        model=name, input_ids=ids.tolist(), labels=labels.tolist(), pad_id=PAD,
        loss=float(loss), loss64=loss64, full_finetune_loss=float(full_loss),
        lora=dict(rank=RANK, alpha=ALPHA, scale=ALPHA / RANK, dropout=0.0, target_modules=TARGETS,
                  modules=list(params), peft_scaling=scaling),
        adamw=dict(ADAMW, betas=list(ADAMW["betas"]), steps=ADAMW_STEPS, amsgrad=False),
        adamw_losses=losses,
        checks=checks,
    )
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def peft_adapters(pm):
    """[(path without base_model.model./.base_layer, wrapped parameter name or None, peft LoRA layer)]."""
    found = []
    for name, module in pm.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or "default" not in lora_a:
            continue
        path = name[len("base_model.model."):] if name.startswith("base_model.model.") else name
        found.append((path.replace(".base_layer", ""), getattr(module, "parameter_name", None), module))
    return found


def expert_block_mask(module, rank):
    """gate_up_proj's B [2I, 2r*E]: column k*E + e is rank slot k of expert e; gate rows take slots < r, up rows the rest."""
    out, columns = module.lora_B["default"].weight.shape
    experts = module.num_experts
    rows = torch.arange(out)[:, None] < out // 2
    slots = (torch.arange(columns) // experts)[None, :] < rank
    return rows == slots


def split_adapter(path, parameter, module, a, b, rank):
    """{Granary module path: (A [r, in], B [out, r])} of one peft adapter (numpy arrays a, b)."""
    if parameter is None or parameter == "weight":
        return {path: (a, b)}
    experts = module.num_experts
    width = module.r["default"]
    a3 = a.reshape(experts, width, a.shape[-1])
    b3 = b.reshape(b.shape[0], width, experts)
    result = {}
    for e in range(experts):
        if parameter == "gate_up_proj":
            half = b.shape[0] // 2
            result[f"{path}.{e}.gate_proj"] = (a3[e, :rank], b3[:half, :rank, e])
            result[f"{path}.{e}.up_proj"] = (a3[e, rank:], b3[half:, rank:, e])
        elif parameter == "down_proj":
            result[f"{path}.{e}.down_proj"] = (a3[e], b3[:, :, e])
        else:
            raise ValueError(f"{path}.{parameter}: no per-expert layout known")
    return result


def check_expert_split(path, parameter, module, rank):
    """peft's own delta weight of a fused expert tensor must equal the per-expert adapters the split gives."""
    with torch.no_grad():
        delta = module.get_delta_weight("default").double().numpy()
        if tuple(delta.shape) != tuple(module.get_param().shape):
            raise RuntimeError(f"{path}.{parameter}: delta {tuple(delta.shape)} vs parameter {tuple(module.get_param().shape)}")
        a = module.lora_A["default"].weight.detach().double().numpy()
        b = module.lora_B["default"].weight.detach().double().numpy()
        scaling = module.scaling["default"]
        parts = split_adapter(path, parameter, module, a, b, rank)
        for e in range(module.num_experts):
            names = [f"{path}.{e}.gate_proj", f"{path}.{e}.up_proj"] if parameter == "gate_up_proj" else [f"{path}.{e}.down_proj"]
            expected = np.concatenate([scaling * parts[n][1] @ parts[n][0] for n in names], axis=0)
            # delta is f32 (about 1e-7 relative); a wrong layout is off by order 1.
            if np.linalg.norm(delta[e] - expected) > 1e-5 * np.linalg.norm(expected):
                raise RuntimeError(f"{path}.{parameter}: expert {e} delta differs from its per-expert adapters")


def run_variant(transformers, peft, models_dir, name, out_dir):
    spec = VARIANTS[name]
    model, cfg = load_model(transformers, os.path.join(models_dir, spec["model"]))
    model.train()
    ids, labels = make_batch(cfg["vocab_size"])
    tensors, checks = {}, {}
    if spec["experts"]:
        lcfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, bias="none", target_modules=ATTENTION,
                               target_parameters=EXPERT_PARAMETERS, rank_pattern={"gate_up_proj": 2 * RANK},
                               alpha_pattern={"gate_up_proj": 2 * ALPHA})
        keys = GRANARY_EXPERT_KEYS
    else:
        lcfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, bias="none", target_modules=TARGETS,
                               use_dora=spec["dora"])
        keys = ["self_attn." + t if t in ATTENTION else "mlp." + t for t in TARGETS]
    pm = peft.get_peft_model(model, lcfg)
    adapters = peft_adapters(pm)
    wrapped = sorted({p for _, p, _ in adapters if p is not None})
    if spec["experts"] and wrapped != ["down_proj", "gate_up_proj", "weight"]:
        raise RuntimeError(f"peft wrapped {wrapped}, expected the router and both expert tensors")

    # Initial values from a fixed seed; gate_up_proj's B block-diagonal (and kept so by a gradient hook).
    rng = np.random.Generator(np.random.PCG64(SEED + 1))
    with torch.no_grad():
        for path, parameter, module in adapters:
            a = module.lora_A["default"].weight
            b = module.lora_B["default"].weight
            a.copy_(torch.from_numpy(rng.standard_normal(a.shape).astype(np.float32) / np.sqrt(a.shape[1])))
            b.copy_(torch.from_numpy(rng.standard_normal(b.shape).astype(np.float32) * 0.05))
            if parameter == "gate_up_proj":
                mask = expert_block_mask(module, RANK)
                b.mul_(mask.to(b.dtype))
                b.register_hook(lambda g, mask=mask: g * mask.to(g.dtype))
            if spec["dora"]:
                weight = module.get_base_layer().weight
                norms = torch.linalg.norm(weight + module.scaling["default"] * (b @ a), dim=1)
                noise = torch.from_numpy(rng.standard_normal(norms.shape).astype(np.float32))
                module.lora_magnitude_vector["default"].weight.copy_(norms * (1 + 0.05 * noise))
    for path, parameter, module in adapters:
        if parameter in ("gate_up_proj", "down_proj"):
            check_expert_split(path, parameter, module, RANK)
    checks["expert_split_matches_peft_delta"] = spec["experts"]

    def snapshot(prefix, read):
        for path, parameter, module in adapters:
            a = read(module.lora_A["default"].weight)
            b = read(module.lora_B["default"].weight)
            for granary, (ga, gb) in split_adapter(path, parameter, module, a, b, RANK).items():
                tensors[f"{prefix}/{granary}.lora_A"] = np.ascontiguousarray(ga)
                tensors[f"{prefix}/{granary}.lora_B"] = np.ascontiguousarray(gb)
            if spec["dora"]:
                tensors[f"{prefix}/{path}.lora_magnitude"] = read(module.lora_magnitude_vector["default"].weight)

    values = lambda p: p.detach().numpy().copy()
    gradients = lambda p: p.grad.detach().numpy().copy()
    snapshot("lora_init", values)
    init = {id(p): p.detach().clone() for p in pm.parameters() if p.requires_grad}
    trainable = [p for p in pm.parameters() if p.requires_grad]
    checks["only_lora_trainable"] = all(not p.requires_grad for n, p in pm.named_parameters() if "lora_" not in n)

    pm.zero_grad()
    loss = loss_of(pm, ids, labels)
    loss.backward()
    snapshot("lora_grad", gradients)

    pm64 = pm.double()
    pm64.zero_grad()
    try:
        objective64 = loss_of(pm64, ids, labels)
        objective64.backward()
        loss64 = float(objective64)
        snapshot("lora_grad64", gradients)
        worst = 0.0
        for key in [k for k in tensors if k.startswith("lora_grad64/")]:
            g64 = tensors[key]
            g32 = tensors["lora_grad/" + key[len("lora_grad64/"):]]
            worst = max(worst, float(np.linalg.norm(g32 - g64) / max(np.linalg.norm(g64), 1e-30)))
        checks["max_relative_error_f32_vs_f64_lora_grad"] = worst
    except RuntimeError as e:
        loss64 = None
        checks["float64_error"] = str(e)
    pm = pm64.float()

    with torch.no_grad():
        for p in trainable:
            p.copy_(init[id(p)])
    opt = torch.optim.AdamW(trainable, **ADAMW)
    losses = []
    for _ in range(ADAMW_STEPS):
        opt.zero_grad()
        step_loss = loss_of(pm, ids, labels)
        losses.append(float(step_loss))
        step_loss.backward()
        opt.step()
    with torch.no_grad():
        losses.append(float(loss_of(pm, ids, labels)))
    snapshot("lora_adamw", values)
    for path, parameter, module in adapters:
        if parameter == "gate_up_proj":
            off_block = module.lora_B["default"].weight.detach()[~expert_block_mask(module, RANK)]
            if off_block.abs().max() != 0:
                raise RuntimeError(f"{path}.gate_up_proj: AdamW moved B off its block diagonal")

    write_safetensors(os.path.join(out_dir, f"{name}.safetensors"), tensors)
    used = pm.peft_config["default"]
    modules = sorted({k[len("lora_init/"):].rsplit(".", 1)[0] for k in tensors if k.startswith("lora_init/")})
    summary = dict(
        model=name, base_model=spec["model"], input_ids=ids.tolist(), labels=labels.tolist(), pad_id=PAD,
        loss=float(loss), loss64=loss64,
        lora=dict(rank=RANK, alpha=ALPHA, scale=ALPHA / RANK, dropout=0.0, use_dora=spec["dora"],
                  target_modules=sorted(used.target_modules), target_parameters=sorted(used.target_parameters or []),
                  granary_keys=keys, modules=modules,
                  peft_adapters=[dict(path=p, parameter=q, r=m.r["default"], scaling=float(m.scaling["default"]),
                                      lora_A=list(m.lora_A["default"].weight.shape),
                                      lora_B=list(m.lora_B["default"].weight.shape)) for p, q, m in adapters]),
        adamw=dict(ADAMW, betas=list(ADAMW["betas"]), steps=ADAMW_STEPS, amsgrad=False),
        adamw_losses=losses,
        checks=checks,
    )
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=os.path.join(os.path.dirname(__file__), "..", "models"))
    ap.add_argument("--out", default=os.path.dirname(__file__))
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    import peft
    import transformers
    os.makedirs(args.out, exist_ok=True)
    versions = dict(transformers=transformers.__version__, peft=peft.__version__, torch=torch.__version__,
                    numpy=np.__version__, device="cpu")
    index_path = os.path.join(args.out, "index.json")
    index = dict(versions, models={})
    if args.only and os.path.exists(index_path):
        # A partial run keeps the other models' entries; its own entries say which versions made them.
        with open(index_path) as f:
            index = json.load(f)
    for name in args.only or MODELS + list(VARIANTS):
        try:
            if name in VARIANTS:
                s = run_variant(transformers, peft, args.models, name, args.out)
                index["models"][name] = dict(loss=s["loss"], adamw_losses=s["adamw_losses"], checks=s["checks"],
                                             versions=versions)
            else:
                s = run_model(transformers, peft, args.models, name, args.out)
                index["models"][name] = dict(loss=s["loss"], adamw_losses=s["adamw_losses"], checks=s["checks"] | {
                    "full_parameter_names": len(s["checks"]["full_parameter_names"])})
            print(name, "loss", s["loss"], "adamw", s["adamw_losses"], s["checks"].get("max_relative_error_f32_vs_f64_lora_grad"), flush=True)
        except Exception as e:  # one model failing must not lose the others
            traceback.print_exc()
            index["models"][name] = dict(error=f"{type(e).__name__}: {e}")
    with open(index_path, "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
