#!/usr/bin/env python3
"""LoRA / full fine-tuning reference numbers for Granary's training tests, from transformers + peft.

For each tiny model under tests/reference/models (see MODELS) this writes, into --out:
  <name>.safetensors  f32 tensors:
      lora_init/<module>.lora_A [r, in], lora_init/<module>.lora_B [out, r]   (set from a fixed seed; peft would zero B)
      lora_grad/<module>.lora_A|B      gradient of the mean masked cross-entropy, torch f32
      lora_grad64/<module>.lora_A|B    the same computed in float64 (how exact the f32 numbers are)
      lora_adamw/<module>.lora_A|B     the adapters after ADAMW_STEPS torch.optim.AdamW steps
      full_grad/<hf parameter name>    gradient w.r.t. every base weight (full fine-tuning, no adapters), f32
  <name>.json  loss, loss64, the batch (input_ids, labels), LoRA and AdamW settings, losses along the AdamW
               steps, versions and self-checks.
<module> is the Hugging Face module path, e.g. model.layers.0.self_attn.q_proj.

Conventions (as transformers computes them): labels are aligned with input_ids and shifted inside the model;
-100 is ignored; the loss is the mean over the remaining target tokens of the whole batch. The batch is
right-padded with no attention mask (causal attention keeps padding out of earlier positions; padded
positions carry label -100). LoRA: y = W x + (alpha / r) * B A x, dropout 0.

MLX-quantized models (QLoRA) are rebuilt in transformers from config.json with the weights dequantized in
f32 (w = scales * q + biases), the same way tests/reference/models was verified.

Usage (torch, numpy, transformers >= 5, peft; CPU, deterministic, a minute or two):
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
    index = dict(transformers=transformers.__version__, peft=peft.__version__, torch=torch.__version__,
                 numpy=np.__version__, device="cpu", models={})
    for name in args.only or MODELS:
        try:
            s = run_model(transformers, peft, args.models, name, args.out)
            index["models"][name] = dict(loss=s["loss"], adamw_losses=s["adamw_losses"], checks=s["checks"] | {
                "full_parameter_names": len(s["checks"]["full_parameter_names"])})
            print(name, "loss", s["loss"], "adamw", s["adamw_losses"], s["checks"].get("max_relative_error_f32_vs_f64_lora_grad"), flush=True)
        except Exception as e:  # one model failing must not lose the others
            traceback.print_exc()
            index["models"][name] = dict(error=f"{type(e).__name__}: {e}")
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
