"""Renders the Llama-3.1-family chat templates in llama31_templates.json with jinja2, set up as transformers
sets it up, and writes the expected prompt texts to llama31_expected.json.

Usage: python3 render_llama31.py   (then: node add_llama3_ids.mjs LLAMA3_TOKENIZER_JSON, see README.md)

The environment matches transformers' chat-template rendering: an ImmutableSandboxedEnvironment with
trim_blocks and lstrip_blocks, the loopcontrols extension, raise_exception and strftime_now globals, and the
special tokens and tools=None passed to render. strftime_now reads a fixed "today" per case instead of the
clock, so that the C# tests can give the tokenizer the same date.
"""

import json
import os
from datetime import datetime

import jinja2
from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|eot_id|>"

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
    # Python's str.strip (Jinja's trim) also removes U+001C..U+001F and U+3000.
    "whitespace-content": [
        {"role": "system", "content": "  padded system  \n"},
        {"role": "user", "content": "\n\tpadded user\u3000\n"},
        {"role": "assistant", "content": "\x1c spaced answer \x1f"},
        {"role": "user", "content": "  last  "}],
    "system-only": [
        {"role": "system", "content": "Only a system prompt."}],
    "empty-system": [
        {"role": "system", "content": ""},
        {"role": "user", "content": "hi"}],
    "system-in-middle": [
        {"role": "user", "content": "first"},
        {"role": "system", "content": "new rules"},
        {"role": "user", "content": "second"}],
    "last-assistant": [
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "hi"}],
}

# Single-digit day first, to show the zero padding of %d; a second date for the clock-driven template.
TODAYS = ["2025-03-07", "2024-12-25"]


def raise_exception(message):
    raise TemplateError(message)


def render(template, messages, add_generation_prompt, today):
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.globals["raise_exception"] = raise_exception
    now = datetime.fromisoformat(today)
    environment.globals["strftime_now"] = now.strftime
    return environment.from_string(template).render(
        messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt,
        bos_token=BOS_TOKEN, eos_token=EOS_TOKEN)


def main():
    with open(os.path.join(HERE, "llama31_templates.json"), encoding="utf-8") as file:
        templates = json.load(file)

    cases = []
    for template_name, source in templates.items():
        for conversation, messages in CONVERSATIONS.items():
            # Every conversation at the first date; the second date only where it can change the text.
            todays = TODAYS if conversation == "system-user" else TODAYS[:1]
            for today in todays:
                for add_generation_prompt in (True, False):
                    cases.append({
                        "template": template_name,
                        "conversation": conversation,
                        "messages": messages,
                        "add_generation_prompt": add_generation_prompt,
                        "today": today,
                        "text": render(source["chat_template"], messages, add_generation_prompt, today),
                    })

    expected = {"renderer": f"jinja2 {jinja2.__version__}", "bos_token": BOS_TOKEN, "cases": cases}
    with open(os.path.join(HERE, "llama31_expected.json"), "w", encoding="utf-8") as file:
        json.dump(expected, file, ensure_ascii=False, indent=1)
        file.write("\n")
    print(f"{len(cases)} cases rendered with jinja2 {jinja2.__version__}")


if __name__ == "__main__":
    main()
