using System.Collections.Concurrent;
using System.Globalization;
using System.Text.Json;
using Granary.Models.Tokenization;

namespace Granary.Models.Tests.Tokenization;

/// <summary>
/// Llama-3.1-family templates (dated system block, tool-calling branches) from public tokenizer_config.json files,
/// compared with jinja2's rendering and Hugging Face tokenizers' ids (tests/reference/chat_templates).
/// </summary>
public sealed class DatedLlama3ChatTemplateTests
{
    private const string ClockTemplate = "llama3.2-instruct";
    private const string FixedDateTemplate = "unsloth-llama3.x";

    private static readonly JsonSerializerOptions s_json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };
    private static readonly Lazy<Dictionary<string, DatedTemplateSource>> s_templates = new(() => Read<Dictionary<string, DatedTemplateSource>>("llama31_templates.json"));
    private static readonly Lazy<DatedTemplateReference> s_expected = new(() => Read<DatedTemplateReference>("llama31_expected.json"));
    private static readonly ConcurrentDictionary<(string Template, string Today), HuggingFaceTokenizer> s_tokenizers = new();

    public static TheoryData<string, string, bool, string> Cases()
    {
        var data = new TheoryData<string, string, bool, string>();
        foreach (var chat in s_expected.Value.Cases)
        {
            data.Add(chat.Template, chat.Conversation, chat.AddGenerationPrompt, chat.Today);
        }

        return data;
    }

    [TokenizerTheory]
    [MemberData(nameof(Cases))]
    public void RenderingMatchesJinja(string template, string conversation, bool addGenerationPrompt, string today)
    {
        var expected = s_expected.Value.Cases.Single(chat =>
            chat.Template == template && chat.Conversation == conversation && chat.AddGenerationPrompt == addGenerationPrompt && chat.Today == today);
        var subject = s_tokenizers.GetOrAdd((template, today), key => Load(Template(key.Template), new SettableClock(key.Today)));

        var text = subject.ApplyChatTemplate(ToMessages(expected), addGenerationPrompt);

        Assert.True(subject.HasChatTemplate);
        Assert.Equal(expected.Text, text);
        Assert.Equal(expected.Ids, subject.Encode(text));
    }

    [TokenizerFact]
    public void TodayIsReadFromTheClockAtEachRendering()
    {
        var dated = s_expected.Value.Cases.Where(chat => chat.Template == ClockTemplate && chat.Conversation == "system-user" && chat.AddGenerationPrompt).ToList();
        Assert.True(dated.Select(chat => chat.Today).Distinct().Count() > 1, "the reference should render one conversation on several dates");
        var clock = new SettableClock(dated[0].Today);
        var subject = Load(Template(ClockTemplate), clock);

        foreach (var expected in dated)
        {
            clock.Today = expected.Today;
            Assert.Equal(expected.Text, subject.ApplyChatTemplate(ToMessages(expected)));
        }
    }

    [TokenizerFact]
    public void EndOfTurnTokenEndsGeneration()
    {
        var subject = Load(Template(FixedDateTemplate), TimeProvider.System);

        Assert.Contains(subject.Encode("<|eot_id|>").Single(), subject.EndOfSequenceIds);
    }

    [TokenizerTheory]
    [InlineData("tool")]
    [InlineData("ipython")]
    public void ToolRolesAreRejected(string role)
    {
        var subject = Load(Template(ClockTemplate), TimeProvider.System);

        var error = Assert.Throws<ArgumentException>(() => subject.ApplyChatTemplate([new ChatMessage("user", "Weather?"), new ChatMessage(role, "{\"temp\": 20}")]));
        Assert.Contains($"'{role}'", error.Message);
    }

    /// <summary>Variants whose output would differ from what this runtime renders are refused with a reason, not rendered wrongly.</summary>
    [TokenizerTheory]
    [InlineData(ClockTemplate, "strftime_now(\"%d %b %Y\")", "strftime_now(\"%B %d, %Y\")", "strftime_now format")]
    [InlineData(ClockTemplate, "message['content'] | trim + '<|eot_id|>'", "message['content'] | upper + '<|eot_id|>'", "knowledge cut-off, date, system prompt or turns")]
    [InlineData(FixedDateTemplate, "messages[0]['content'] %}", "messages[0]['content'] | replace('a', 'b') %}", "knowledge cut-off, date, system prompt or turns")]
    [InlineData(ClockTemplate, "messages[0]['content']|trim %}", "messages[0]['content'] %}", "not both")]
    [InlineData(FixedDateTemplate, "{{- bos_token }}", "{{- bos_token }}{%- if false %}<|image|>{%- endif %}", "Llama-3.2-Vision")]
    public void UnrenderedVariantsAreReported(string template, string original, string replacement, string reason)
    {
        var source = Template(template);
        Assert.Contains(original, source);
        var subject = Load(source.Replace(original, replacement, StringComparison.Ordinal), TimeProvider.System);

        Assert.False(subject.HasChatTemplate);
        var error = Assert.Throws<NotSupportedException>(() => subject.ApplyChatTemplate([new ChatMessage("user", "hi")]));
        Assert.Contains(reason, error.Message);
    }

    private static HuggingFaceTokenizer Load(string template, TimeProvider clock)
    {
        using var directory = new ScratchDirectory();
        return HuggingFaceTokenizer.Load(TokenizerFiles.VariantWithConfig(directory, TokenizerFiles.Llama3Directory, config => config["chat_template"] = template), clock);
    }

    private static string Template(string name) => s_templates.Value[name].ChatTemplate;

    private static List<ChatMessage> ToMessages(DatedTemplateCase chat) => chat.Messages.Select(message => new ChatMessage(message.Role, message.Content)).ToList();

    private static T Read<T>(string file)
    {
        var path = ReferenceData.PathOf(Path.Combine("..", "chat_templates", file));
        return JsonSerializer.Deserialize<T>(File.ReadAllText(path), s_json) ?? throw new InvalidDataException($"{path} is empty.");
    }

    /// <summary>A clock whose local date is set by the test, in UTC so that the machine's time zone cannot move the date.</summary>
    private sealed class SettableClock(string today) : TimeProvider
    {
        public string Today { get; set; } = today;

        public override TimeZoneInfo LocalTimeZone => TimeZoneInfo.Utc;

        public override DateTimeOffset GetUtcNow() =>
            new(DateTime.ParseExact(Today, "yyyy-MM-dd", CultureInfo.InvariantCulture).AddHours(12), TimeSpan.Zero);
    }
}

/// <summary>One entry of llama31_templates.json; its source (repository, commit, path) is there for people, not for the tests.</summary>
internal sealed record DatedTemplateSource(string ChatTemplate);

internal sealed record DatedTemplateReference(DatedTemplateCase[] Cases);

internal sealed record DatedTemplateCase(
    string Template,
    string Conversation,
    ReferenceMessage[] Messages,
    bool AddGenerationPrompt,
    string Today,
    string Text,
    int[] Ids);
