// Adds to every case of llama31_expected.json the ids that Hugging Face tokenizers (the npm package
// "tokenizers", its Node binding) gives the case's text with the Llama-3 tokenizer.json, without special tokens
// added around it, as HuggingFaceTokenizer.Encode(text) is compared.
//
// Usage: node add_llama3_ids.mjs LLAMA3_TOKENIZER_JSON   (with "tokenizers" resolvable, e.g. NODE_PATH set)
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const tokenizerPath = process.argv[2];
if (!tokenizerPath) {
  console.error("usage: node add_llama3_ids.mjs LLAMA3_TOKENIZER_JSON");
  process.exit(2);
}

// Resolved from the working directory (or NODE_PATH), where the package was installed, not from this folder.
const require = createRequire(join(process.cwd(), "noop.js"));
const { Tokenizer } = require("tokenizers");
const { version } = require("tokenizers/package.json");
const tokenizer = Tokenizer.fromFile(tokenizerPath);

const expectedPath = join(here, "llama31_expected.json");
const expected = JSON.parse(readFileSync(expectedPath, "utf8"));
for (const chatCase of expected.cases) {
  const encoding = await tokenizer.encode(chatCase.text, null, { addSpecialTokens: false });
  chatCase.ids = encoding.getIds();
}

expected.ids_from = `tokenizers ${version} (npm)`;
writeFileSync(expectedPath, JSON.stringify(expected, null, 1) + "\n");
console.log(`${expected.cases.length} cases encoded with tokenizers ${version}`);
