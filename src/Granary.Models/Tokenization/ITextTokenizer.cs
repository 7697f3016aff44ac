namespace Granary.Models.Tokenization;

/// <summary>Text to token ids and back for one model, built from its tokenizer.json and tokenizer_config.json.</summary>
public interface ITextTokenizer
{
    int VocabularySize { get; }

    /// <summary>Ids that end generation (from generation_config.json, tokenizer_config.json and the chat format).</summary>
    IReadOnlySet<int> EndOfSequenceIds { get; }

    /// <summary>Encodes text; special tokens written in the text (e.g. "&lt;|im_start|&gt;") map to their ids.</summary>
    IReadOnlyList<int> Encode(string text, bool addSpecialTokens = false);

    string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens = false);

    /// <summary>A decoder that turns ids into text one at a time, holding back incomplete UTF-8 sequences.</summary>
    IStreamingDecoder CreateStreamingDecoder(bool skipSpecialTokens = true);

    /// <summary>Whether tokenizer_config.json names a chat format this tokenizer can render.</summary>
    bool HasChatTemplate { get; }

    /// <summary>Renders a conversation with the model's chat format, ending with the assistant prompt when asked.</summary>
    string ApplyChatTemplate(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true, bool enableThinking = false);
}

/// <summary>Turns a stream of ids into text, emitting only complete characters.</summary>
public interface IStreamingDecoder
{
    /// <summary>Adds one id; returns the text that became complete (possibly empty).</summary>
    string Push(int id);

    /// <summary>Returns whatever text is still held back (replacement characters for broken UTF-8).</summary>
    string Flush();
}

/// <param name="Role">"system", "user" or "assistant".</param>
public sealed record ChatMessage(string Role, string Content);
