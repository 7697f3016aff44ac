using System.Runtime.InteropServices;
using Granary.Tensors;

namespace Granary.Models.Transformer;

/// <summary>
/// A sequence's rows in one forward pass: its tokens <see cref="Ids"/> take rows Row..Row+n-1 of the step and go at
/// positions cache.Length.. of its cache.
/// </summary>
internal readonly record struct PassSegment(int Sequence, KvCache Cache, ReadOnlyMemory<int> Ids, int Row, bool WantsLogits)
{
    public int Count => Ids.Length;
}

/// <summary>
/// The ragged layout of one pass over the rows of several sequences: the position of every row (for rope over all
/// rows at once) and each sequence's views of the step's query, key, value and attention heads, so attention and the
/// cache writes run per sequence against its own cache while every matmul runs over all rows.
/// </summary>
internal sealed class PassLayout : IDisposable
{
    private readonly Tensor? _uploadedPositions;

    public PassLayout(IComputeBackend backend, ForwardScratch.StepTensors step, List<PassSegment> segments, int[] positionScratch, Tensor inverseFrequencies)
    {
        InverseFrequencies = inverseFrequencies;
        Segments = new SegmentViews[segments.Count];
        for (var i = 0; i < Segments.Length; i++)
        {
            var (cache, row, count) = (segments[i].Cache, segments[i].Row, segments[i].Count);
            Segments[i] = new SegmentViews(
                cache,
                cache.Length,
                count,
                step.RotatedQueryHeads.Slice(row, count),
                step.RotatedKeyHeads.Slice(row, count),
                step.ValueHeads.Slice(row, count),
                step.AttentionHeads.Slice(row, count));
        }

        if (Segments.Length == 1)
        {
            // One sequence: its cache's resident position ids serve, nothing is uploaded.
            Positions = Segments[0].Cache.Positions.Slice(Segments[0].Start, Segments[0].Count);
            return;
        }

        var rows = 0;
        foreach (var segment in Segments)
        {
            for (var j = 0; j < segment.Count; j++)
            {
                positionScratch[rows++] = segment.Start + j;
            }
        }

        _uploadedPositions = backend.Upload(MemoryMarshal.AsBytes(positionScratch.AsSpan(0, rows)), DType.I32, rows);
        Positions = _uploadedPositions;
    }

    /// <summary>i32 [rows]: the cache position of every row of the pass.</summary>
    public Tensor Positions { get; }

    public Tensor InverseFrequencies { get; }

    public SegmentViews[] Segments { get; }

    public void Dispose() => _uploadedPositions?.Dispose();

    /// <summary>One sequence's rows: positions Start..Start+Count-1 of Cache.</summary>
    internal readonly record struct SegmentViews(KvCache Cache, int Start, int Count, Tensor Query, Tensor Key, Tensor Value, Tensor Attention);
}
