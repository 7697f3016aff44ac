using System.Text;
using System.Text.Json.Nodes;
using Granary.Models.Tokenization;

namespace Granary.Models.BuiltIn;

/// <summary>
/// Writes the tokenizer files of the built-in model: a byte-level BPE in the Hugging Face tokenizer.json format whose
/// merges spell a list of common English words, ChatML special tokens and a ChatML chat template, so the built-in
/// model goes through exactly the loading path of a downloaded Qwen checkpoint.
/// </summary>
internal static class BuiltInTokenizerFiles
{
    public const string EndOfText = "<|endoftext|>";
    public const string ImStart = "<|im_start|>";
    public const string ImEnd = "<|im_end|>";

    // Qwen2's pre-tokenizer split: contractions, letters with one leading non-letter, single digits, punctuation
    // runs, newlines and other whitespace.
    private const string PreTokenizerPattern =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private const string ChatTemplate =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}" +
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    private const string Words =
        "the of and to in is was for that with as on by at from his her he she it they we you are be this which or " +
        "had not but have an were their been has one all would there what so up out if about who when more them " +
        "some could time into only other new then these two may first its any like now over such our even most " +
        "made after also did many before must through back years where much your way well down should because " +
        "each just those people how too little state good very make world still own see men work long here get " +
        "both between life being under never day same another know while last might us great old year off come " +
        "since against go came right used take three place small found part again home water house end number " +
        "light city cluster model silo shard grain token layer weight tensor host machine answer question " +
        "distributed inference training memory network data plane rank group sum gather send receive granary " +
        "orleans actor message stream text language word letter sentence story river mountain forest garden " +
        "morning evening night summer winter spring autumn bread wheat harvest field farmer market village road";

    /// <summary>Writes tokenizer.json and tokenizer_config.json; returns the vocabulary size (special tokens included).</summary>
    public static int Write(string directory)
    {
        var vocabulary = new Dictionary<string, int>(StringComparer.Ordinal);
        var merges = new List<string>();
        for (var b = 0; b < 256; b++)
        {
            vocabulary[ByteLevelAlphabet.ToChar((byte)b).ToString()] = b;
        }

        foreach (var word in Words.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            AddWord(word, vocabulary, merges);
            AddWord(" " + word, vocabulary, merges);
        }

        var specials = new[] { EndOfText, ImStart, ImEnd };
        var addedTokens = new JsonArray();
        foreach (var special in specials)
        {
            addedTokens.Add(new JsonObject
            {
                ["id"] = vocabulary.Count + addedTokens.Count,
                ["content"] = special,
                ["single_word"] = false,
                ["lstrip"] = false,
                ["rstrip"] = false,
                ["normalized"] = false,
                ["special"] = true,
            });
        }

        var vocabularyJson = new JsonObject();
        foreach (var (token, id) in vocabulary)
        {
            vocabularyJson[token] = id;
        }

        var mergesJson = new JsonArray();
        foreach (var merge in merges)
        {
            mergesJson.Add(merge);
        }

        var tokenizer = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = addedTokens,
            ["normalizer"] = new JsonObject { ["type"] = "NFC" },
            ["pre_tokenizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray
                {
                    new JsonObject
                    {
                        ["type"] = "Split",
                        ["pattern"] = new JsonObject { ["Regex"] = PreTokenizerPattern },
                        ["behavior"] = "Isolated",
                        ["invert"] = false,
                    },
                    new JsonObject
                    {
                        ["type"] = "ByteLevel",
                        ["add_prefix_space"] = false,
                        ["trim_offsets"] = false,
                        ["use_regex"] = false,
                    },
                },
            },
            ["post_processor"] = new JsonObject
            {
                ["type"] = "ByteLevel",
                ["add_prefix_space"] = false,
                ["trim_offsets"] = false,
                ["use_regex"] = false,
            },
            ["decoder"] = new JsonObject
            {
                ["type"] = "ByteLevel",
                ["add_prefix_space"] = false,
                ["trim_offsets"] = false,
                ["use_regex"] = false,
            },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["dropout"] = null,
                ["unk_token"] = null,
                ["continuing_subword_prefix"] = "",
                ["end_of_word_suffix"] = "",
                ["fuse_unk"] = false,
                ["byte_fallback"] = false,
                ["ignore_merges"] = false,
                ["vocab"] = vocabularyJson,
                ["merges"] = mergesJson,
            },
        };

        var addedTokensDecoder = new JsonObject();
        foreach (var token in addedTokens)
        {
            addedTokensDecoder[token!["id"]!.GetValue<int>().ToString(System.Globalization.CultureInfo.InvariantCulture)] = token.DeepClone();
        }

        var config = new JsonObject
        {
            ["tokenizer_class"] = "Qwen2Tokenizer",
            ["add_bos_token"] = false,
            ["add_prefix_space"] = false,
            ["bos_token"] = null,
            ["eos_token"] = ImEnd,
            ["pad_token"] = EndOfText,
            ["unk_token"] = null,
            ["model_max_length"] = 4096,
            ["added_tokens_decoder"] = addedTokensDecoder,
            ["chat_template"] = ChatTemplate,
        };

        File.WriteAllText(Path.Combine(directory, "tokenizer.json"), tokenizer.ToJsonString());
        File.WriteAllText(Path.Combine(directory, "tokenizer_config.json"), config.ToJsonString());
        return vocabulary.Count + specials.Length;
    }

    /// <summary>Adds merges that build <paramref name="word"/> left to right, one byte at a time.</summary>
    private static void AddWord(string word, Dictionary<string, int> vocabulary, List<string> merges)
    {
        var bytes = Encoding.UTF8.GetBytes(word);
        var built = ByteLevelAlphabet.ToChar(bytes[0]).ToString();
        for (var i = 1; i < bytes.Length; i++)
        {
            var next = ByteLevelAlphabet.ToChar(bytes[i]).ToString();
            var merged = built + next;
            if (!vocabulary.ContainsKey(merged))
            {
                vocabulary[merged] = vocabulary.Count;
                merges.Add(built + " " + next);
            }

            built = merged;
        }
    }
}
