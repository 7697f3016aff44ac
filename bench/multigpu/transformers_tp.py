"""Hugging Face transformers on the Qwen3-8B shape of Granary's multi-GPU table (random bf16 weights).

`python3 transformers_tp.py save DIR` writes the checkpoint once (tp_plan needs one to load from);
`torchrun --nproc-per-node N transformers_tp.py run DIR` loads it with tp_plan="auto" (plain on one GPU) and prints
decode tokens/s of greedy `generate` at batch 1 after a 512-token prompt, the prompt's prefill and first token taken out.
"""
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

SHAPE = dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
             intermediate_size=12288, tie_word_embeddings=False, vocab_size=151936, max_position_embeddings=4096,
             rope_theta=1e6, rms_norm_eps=1e-6)
PROMPT, NEW_TOKENS = 512, 64


def save(path):
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(Qwen3Config(**SHAPE))
    model.save_pretrained(path)


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def run(path):
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    placement = dict(tp_plan="auto") if world > 1 else dict(device_map="cuda")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **placement).eval()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, SHAPE["vocab_size"], (1, PROMPT), generator=generator).to(model.device)
    mask = torch.ones_like(ids)

    def generate(n):
        return model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    with torch.no_grad():
        generate(2)
        first = timed(lambda: generate(1))
        total = timed(lambda: generate(NEW_TOKENS))
    if rank == 0:
        print(f"hf-result ranks={world} decode={(NEW_TOKENS - 1) / (total - first):.1f} "
              f"device={torch.cuda.get_device_name()} torch={torch.__version__}", flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    {"save": save, "run": run}[sys.argv[1]](sys.argv[2])
