using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Granary.Models.Tokenization;

/// <summary>
/// A chat template rendered in code. The format is recognised from the Jinja template text; only plain
/// system/user/assistant text turns are rendered, with the exact output of the template for them.
/// </summary>
internal abstract partial class ChatFormat
{
    /// <summary>The token that closes a turn, which also ends generation.</summary>
    public abstract string EndOfTurnToken { get; }

    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, bool enableThinking)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0)
        {
            throw new ArgumentException("A conversation needs at least one message.", nameof(messages));
        }

        foreach (var message in messages)
        {
            if (message.Role is not ("system" or "user" or "assistant"))
            {
                throw new ArgumentException($"Chat role '{message.Role}' is not supported; use \"system\", \"user\" or \"assistant\".", nameof(messages));
            }
        }

        var text = new StringBuilder();
        Render(messages, addGenerationPrompt, enableThinking, text);
        return text.ToString();
    }

    protected abstract void Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, bool enableThinking, StringBuilder text);

    /// <summary>Recognises the template's format; returns null and the reason when it is not one this runtime renders.</summary>
    /// <param name="clock">Today's date for templates that put it in the prompt from the clock, as transformers' strftime_now does.</param>
    public static ChatFormat? Detect(string template, string? beginningOfTextToken, TimeProvider clock, out string unsupportedReason)
    {
        unsupportedReason = "";
        if (template.Contains("<|im_start|>", StringComparison.Ordinal))
        {
            if (template.Contains("enable_thinking", StringComparison.Ordinal))
            {
                return new Qwen3ChatFormat();
            }

            if (template.Contains("<think>", StringComparison.Ordinal))
            {
                unsupportedReason = "its ChatML template handles <think> blocks without an enable_thinking switch, a variant this runtime does not render";
                return null;
            }

            var defaultSystem = DefaultSystemPromptPattern().Match(template);
            return new ChatMlFormat(defaultSystem.Success ? defaultSystem.Groups["prompt"].Value.Replace("\\n", "\n", StringComparison.Ordinal) : null);
        }

        if (template.Contains("<|start_header_id|>", StringComparison.Ordinal))
        {
            if (template.Contains("Cutting Knowledge Date", StringComparison.Ordinal))
            {
                return DatedLlama3ChatFormat.FromTemplate(template, beginningOfTextToken, clock, out unsupportedReason);
            }

            return new Llama3ChatFormat(
                template.Contains("bos_token", StringComparison.Ordinal) ? beginningOfTextToken ?? "" : "",
                generationPromptAlways: !template.Contains("add_generation_prompt", StringComparison.Ordinal));
        }

        unsupportedReason = "its chat_template is neither ChatML (<|im_start|>) nor Llama-3 (<|start_header_id|>)";
        return null;
    }

    /// <summary>A system turn written out literally in the template, which Qwen2-style templates emit when the conversation has none.</summary>
    [GeneratedRegex(@"<\|im_start\|>system\\n(?<prompt>[^'""+\\]*(?:\\n[^'""+\\]*)*)<\|im_end\|>")]
    private static partial Regex DefaultSystemPromptPattern();

    /// <summary>Jinja's trim is Python's str.strip(), whose white space also includes U+001C..U+001F.</summary>
    protected static ReadOnlySpan<char> PythonStrip(string value)
    {
        var span = value.AsSpan();
        var start = 0;
        while (start < span.Length && IsPythonWhiteSpace(span[start]))
        {
            start++;
        }

        var end = span.Length;
        while (end > start && IsPythonWhiteSpace(span[end - 1]))
        {
            end--;
        }

        return span[start..end];
    }

    private static bool IsPythonWhiteSpace(char c) => char.IsWhiteSpace(c) || c is >= '\u001C' and <= '\u001F';
}

/// <summary>ChatML (Qwen2/Qwen2.5): "&lt;|im_start|&gt;role\ncontent&lt;|im_end|&gt;\n" per turn, with the template's default system turn if it has one.</summary>
internal sealed class ChatMlFormat(string? defaultSystemPrompt) : ChatFormat
{
    public override string EndOfTurnToken => "<|im_end|>";

    protected override void Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, bool enableThinking, StringBuilder text)
    {
        if (defaultSystemPrompt is not null && messages[0].Role != "system")
        {
            text.Append("<|im_start|>system\n").Append(defaultSystemPrompt).Append("<|im_end|>\n");
        }

        foreach (var message in messages)
        {
            text.Append("<|im_start|>").Append(message.Role).Append('\n').Append(message.Content).Append("<|im_end|>\n");
        }

        if (addGenerationPrompt)
        {
            text.Append("<|im_start|>assistant\n");
        }
    }
}

/// <summary>
/// Qwen3's ChatML: reasoning (&lt;think&gt;…&lt;/think&gt;) is kept only for assistant turns after the last user query,
/// and with thinking disabled the generation prompt carries an empty think block.
/// </summary>
internal sealed class Qwen3ChatFormat : ChatFormat
{
    private const string ThinkOpen = "<think>";
    private const string ThinkClose = "</think>";

    public override string EndOfTurnToken => "<|im_end|>";

    protected override void Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, bool enableThinking, StringBuilder text)
    {
        if (messages[0].Role == "system")
        {
            text.Append("<|im_start|>system\n").Append(messages[0].Content).Append("<|im_end|>\n");
        }

        var lastQueryIndex = messages.Count - 1;
        for (var i = messages.Count - 1; i >= 0; i--)
        {
            var content = messages[i].Content;
            var isToolResponse = content.StartsWith("<tool_response>", StringComparison.Ordinal) && content.EndsWith("</tool_response>", StringComparison.Ordinal);
            if (messages[i].Role == "user" && !isToolResponse)
            {
                lastQueryIndex = i;
                break;
            }
        }

        for (var i = 0; i < messages.Count; i++)
        {
            var message = messages[i];
            if (message.Role == "user" || (message.Role == "system" && i > 0))
            {
                text.Append("<|im_start|>").Append(message.Role).Append('\n').Append(message.Content).Append("<|im_end|>\n");
            }
            else if (message.Role == "assistant")
            {
                var (reasoning, answer) = SplitReasoning(message.Content);
                text.Append("<|im_start|>assistant\n");
                if (i > lastQueryIndex && (i == messages.Count - 1 || reasoning.Length > 0))
                {
                    text.Append("<think>\n").Append(reasoning.Trim('\n')).Append("\n</think>\n\n").Append(answer.TrimStart('\n'));
                }
                else
                {
                    text.Append(answer);
                }

                text.Append("<|im_end|>\n");
            }
        }

        if (addGenerationPrompt)
        {
            text.Append("<|im_start|>assistant\n");
            if (!enableThinking)
            {
                text.Append("<think>\n\n</think>\n\n");
            }
        }
    }

    /// <summary>The template's split: the answer follows the last &lt;/think&gt;, the reasoning sits between the last &lt;think&gt; and the first &lt;/think&gt;.</summary>
    private static (string Reasoning, string Answer) SplitReasoning(string content)
    {
        var firstClose = content.IndexOf(ThinkClose, StringComparison.Ordinal);
        if (firstClose < 0)
        {
            return ("", content);
        }

        var answer = content[(content.LastIndexOf(ThinkClose, StringComparison.Ordinal) + ThinkClose.Length)..].TrimStart('\n');
        var beforeClose = content[..firstClose].TrimEnd('\n');
        var lastOpen = beforeClose.LastIndexOf(ThinkOpen, StringComparison.Ordinal);
        var reasoning = (lastOpen < 0 ? beforeClose : beforeClose[(lastOpen + ThinkOpen.Length)..]).TrimStart('\n');
        return (reasoning, answer);
    }
}

/// <summary>Llama-3: header-delimited turns with trimmed content, the first prefixed with the beginning-of-text token.</summary>
internal sealed class Llama3ChatFormat(string beginningOfText, bool generationPromptAlways) : ChatFormat
{
    public override string EndOfTurnToken => "<|eot_id|>";

    protected override void Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, bool enableThinking, StringBuilder text)
    {
        text.Append(beginningOfText);
        foreach (var message in messages)
        {
            text.Append("<|start_header_id|>").Append(message.Role).Append("<|end_header_id|>\n\n")
                .Append(PythonStrip(message.Content)).Append("<|eot_id|>");
        }

        // The template shipped with some Llama-3 tokenizers appends the assistant header unconditionally.
        if (addGenerationPrompt || generationPromptAlways)
        {
            text.Append("<|start_header_id|>assistant<|end_header_id|>\n\n");
        }
    }
}

/// <summary>
/// Llama-3.1/3.2/3.3: a system turn always comes first and carries the knowledge cut-off and today's date ahead of the
/// conversation's own system prompt. The template's tool-calling branches are never taken: no tools are passed and
/// tool roles are refused before rendering.
/// </summary>
internal sealed partial class DatedLlama3ChatFormat : ChatFormat
{
    /// <summary>strftime's "%d %b %Y" in the C locale, the only clock format Meta's templates use.</summary>
    private const string ClockDateFormat = "dd MMM yyyy";

    private readonly string _beginningOfText;
    private readonly string _knowledgeCutoff;
    private readonly Func<string> _today;
    private readonly bool _trimsContent;

    private DatedLlama3ChatFormat(string beginningOfText, string knowledgeCutoff, Func<string> today, bool trimsContent)
    {
        _beginningOfText = beginningOfText;
        _knowledgeCutoff = knowledgeCutoff;
        _today = today;
        _trimsContent = trimsContent;
    }

    public override string EndOfTurnToken => "<|eot_id|>";

    /// <summary>
    /// Reads the pieces that vary between the family's templates (cut-off, date source, trimming); returns null and the
    /// reason when a piece is missing or takes a form whose output this class would not reproduce exactly.
    /// </summary>
    public static DatedLlama3ChatFormat? FromTemplate(string template, string? beginningOfTextToken, TimeProvider clock, out string unsupportedReason)
    {
        unsupportedReason = "";
        if (template.Contains("<|image|>", StringComparison.Ordinal))
        {
            unsupportedReason = "its Llama-3.2-Vision template (image turns, a dated system block only with a system message) is not rendered by this runtime";
            return null;
        }

        var knowledgeCutoff = KnowledgeCutoffPattern().Match(template);
        var defaultDate = DefaultDatePattern().Match(template);
        var systemPrompt = SystemPromptPattern().Match(template);
        var turn = TurnContentPattern().Match(template);
        if (!knowledgeCutoff.Success || !defaultDate.Success || !systemPrompt.Success || !turn.Success || !TodayDatePattern().IsMatch(template))
        {
            unsupportedReason = "its Llama-3.1-style template writes its knowledge cut-off, date, system prompt or turns in a form this runtime does not render";
            return null;
        }

        // Meta's templates trim both, Unsloth's rewrite neither; a mix is a variant of its own.
        var trimsContent = systemPrompt.Groups["trim"].Success;
        if (turn.Groups["trim"].Success != trimsContent)
        {
            unsupportedReason = "its Llama-3.1-style template trims the system prompt or the turns but not both";
            return null;
        }

        // transformers defines strftime_now, so a template that asks for it gets today's local date rather than its literal default.
        Func<string> today;
        if (template.Contains("strftime_now", StringComparison.Ordinal))
        {
            if (!ClockDatePattern().IsMatch(template))
            {
                unsupportedReason = "its Llama-3.1-style template formats today's date with a strftime_now format other than \"%d %b %Y\"";
                return null;
            }

            today = () => clock.GetLocalNow().ToString(ClockDateFormat, CultureInfo.InvariantCulture);
        }
        else
        {
            var date = defaultDate.Groups["date"].Value;
            today = () => date;
        }

        return new DatedLlama3ChatFormat(
            template.Contains("bos_token", StringComparison.Ordinal) ? beginningOfTextToken ?? "" : "",
            knowledgeCutoff.Groups["cutoff"].Value,
            today,
            trimsContent);
    }

    protected override void Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, bool enableThinking, StringBuilder text)
    {
        // A leading system message leaves the turns and goes into the dated system block; a later one stays a turn.
        var hasSystemPrompt = messages[0].Role == "system";
        text.Append(_beginningOfText)
            .Append("<|start_header_id|>system<|end_header_id|>\n\n")
            .Append("Cutting Knowledge Date: ").Append(_knowledgeCutoff).Append('\n')
            .Append("Today Date: ").Append(_today()).Append("\n\n");
        if (hasSystemPrompt)
        {
            text.Append(Content(messages[0]));
        }

        text.Append("<|eot_id|>");
        for (var i = hasSystemPrompt ? 1 : 0; i < messages.Count; i++)
        {
            text.Append("<|start_header_id|>").Append(messages[i].Role).Append("<|end_header_id|>\n\n")
                .Append(Content(messages[i])).Append("<|eot_id|>");
        }

        if (addGenerationPrompt)
        {
            text.Append("<|start_header_id|>assistant<|end_header_id|>\n\n");
        }
    }

    private ReadOnlySpan<char> Content(ChatMessage message) => _trimsContent ? PythonStrip(message.Content) : message.Content;

    /// <summary>The cut-off inside the template's string literal, up to its closing quote or its "\n" (escaped or not).</summary>
    [GeneratedRegex(@"Cutting Knowledge Date: (?<cutoff>[^""'\\\r\n]+)")]
    private static partial Regex KnowledgeCutoffPattern();

    [GeneratedRegex(@"(?<quote>[""'])Today Date: \k<quote>\s*\+\s*date_string\b")]
    private static partial Regex TodayDatePattern();

    /// <summary>The literal date used when the caller passes no date_string and no clock is asked for.</summary>
    [GeneratedRegex(@"set\s+date_string\s*=\s*(?<quote>[""'])(?<date>[^""'\\]*)\k<quote>")]
    private static partial Regex DefaultDatePattern();

    [GeneratedRegex(@"set\s+date_string\s*=\s*strftime_now\(\s*(?<quote>[""'])%d %b %Y\k<quote>\s*\)")]
    private static partial Regex ClockDatePattern();

    /// <summary>The leading system message taken as it is or trimmed, and nothing else done to it.</summary>
    [GeneratedRegex(@"set\s+system_message\s*=\s*messages\[0\]\[(?<quote>[""'])content\k<quote>\](?<trim>\s*\|\s*trim)?\s*-?%\}")]
    private static partial Regex SystemPromptPattern();

    /// <summary>A plain turn's content, as it is or trimmed, followed directly by the end-of-turn token.</summary>
    [GeneratedRegex(@"message\[(?<quote>[""'])content\k<quote>\](?<trim>\s*\|\s*trim)?\s*\+\s*(?<eot>[""'])<\|eot_id\|>\k<eot>")]
    private static partial Regex TurnContentPattern();
}
