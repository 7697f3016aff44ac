using System.Collections.Concurrent;
using Granary.Models.Tokenization;

namespace Granary.Models.Tests.Tokenization;

/// <summary>Chat formatting compared with the real Jinja templates rendered by transformers.</summary>
public sealed class ChatTemplateTests
{
    private static readonly ConcurrentDictionary<(string Tokenizer, string Template), HuggingFaceTokenizer> s_variants = new();

    public static TheoryData<string, int> Cases()
    {
        var data = new TheoryData<string, int>();
        foreach (var tokenizer in new[] { "qwen3", "llama3" })
        {
            for (var index = 0; index < ReferenceData.Chat.Cases(tokenizer).Count; index++)
            {
                data.Add(tokenizer, index);
            }
        }

        return data;
    }

    [TokenizerTheory]
    [MemberData(nameof(Cases))]
    public void RenderingMatchesJinja(string tokenizer, int index)
    {
        var expected = ReferenceData.Chat.Cases(tokenizer)[index];
        var subject = expected.Template == "shipped" ? TokenizerFiles.ByName(tokenizer) : WithTemplate(tokenizer, expected.Template);
        var messages = expected.Messages.Select(message => new ChatMessage(message.Role, message.Content)).ToList();

        var text = subject.ApplyChatTemplate(messages, expected.AddGenerationPrompt, expected.EnableThinking);

        Assert.True(subject.HasChatTemplate);
        Assert.Equal(expected.Text, text);
        Assert.Equal(expected.Ids, subject.Encode(text));
    }

    [TokenizerFact]
    public void ChatTemplateJinjaFileTakesPrecedence()
    {
        using var directory = new ScratchDirectory();
        TokenizerFiles.VariantWithConfig(directory, TokenizerFiles.Llama3Directory, _ => { });
        File.WriteAllText(Path.Combine(directory, "chat_template.jinja"), ReferenceData.Chat.Templates["llama3-conditional-prompt"]);
        var subject = HuggingFaceTokenizer.Load(directory);

        foreach (var expected in ReferenceData.Chat.Llama3.Where(chat => chat.Template == "llama3-conditional-prompt"))
        {
            var messages = expected.Messages.Select(message => new ChatMessage(message.Role, message.Content)).ToList();
            Assert.Equal(expected.Text, subject.ApplyChatTemplate(messages, expected.AddGenerationPrompt, expected.EnableThinking));
        }
    }

    [TokenizerFact]
    public void UnknownTemplateIsReportedWithItsFile()
    {
        using var directory = new ScratchDirectory();
        TokenizerFiles.VariantWithConfig(directory, TokenizerFiles.Qwen3Directory, config => config["chat_template"] = "{{ messages[0]['content'] }}");
        var subject = HuggingFaceTokenizer.Load(directory);

        Assert.False(subject.HasChatTemplate);
        var error = Assert.Throws<NotSupportedException>(() => subject.ApplyChatTemplate([new ChatMessage("user", "hi")]));
        Assert.Contains(Path.Combine(directory.Path, "tokenizer_config.json"), error.Message);
    }

    [TokenizerFact]
    public void MissingTemplateIsReported()
    {
        using var directory = new ScratchDirectory();
        TokenizerFiles.VariantWithConfig(directory, TokenizerFiles.Llama3Directory, config => config.Remove("chat_template"));
        var subject = HuggingFaceTokenizer.Load(directory);

        Assert.False(subject.HasChatTemplate);
        var error = Assert.Throws<NotSupportedException>(() => subject.ApplyChatTemplate([new ChatMessage("user", "hi")]));
        Assert.Contains("has no chat_template", error.Message);
    }

    [TokenizerFact]
    public void RolesOutsideTheTemplatesAreRejected()
    {
        var error = Assert.Throws<ArgumentException>(() => TokenizerFiles.Qwen3.ApplyChatTemplate([new ChatMessage("tool", "{}")]));
        Assert.Contains("'tool'", error.Message);
    }

    private static HuggingFaceTokenizer WithTemplate(string tokenizer, string template) =>
        s_variants.GetOrAdd((tokenizer, template), key =>
        {
            var source = key.Tokenizer == "qwen3" ? TokenizerFiles.Qwen3Directory : TokenizerFiles.Llama3Directory;
            using var directory = new ScratchDirectory();
            return HuggingFaceTokenizer.Load(TokenizerFiles.VariantWithConfig(directory, source, config => config["chat_template"] = ReferenceData.Chat.Templates[key.Template]));
        });
}
