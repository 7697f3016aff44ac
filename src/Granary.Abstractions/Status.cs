namespace Granary.Abstractions;

/// <summary>Memory as a silo's compute backend sees it.</summary>
[GenerateSerializer, Immutable, Alias("granary.HostMemory")]
public sealed record HostMemory(
    [property: Id(0)] long TotalBytes,
    [property: Id(1)] long AvailableBytes,
    [property: Id(2)] long ModelBytes);

/// <summary>A shard held by a silo's model host.</summary>
[GenerateSerializer, Immutable, Alias("granary.ShardStatus")]
public sealed record ShardStatus(
    [property: Id(0)] ShardAssignment Assignment,
    [property: Id(1)] string Directory,
    [property: Id(2)] long WeightBytes,
    [property: Id(3)] DateTimeOffset LoadedAt,
    [property: Id(4)] TimeSpan LoadTime,
    [property: Id(5)] BatchState? Batching = null);

/// <summary>
/// The continuous batch of a shard that runs one (a whole model, or the leader of a split one): its size now, its
/// queue, and counters since load; generated tokens over steps is the mean batch size.
/// </summary>
[GenerateSerializer, Immutable, Alias("granary.BatchState")]
public sealed record BatchState(
    [property: Id(0)] int RunningSequences,
    [property: Id(1)] int QueuedRequests,
    [property: Id(2)] int LastBatchSize,
    [property: Id(3)] long PromptCacheHits,
    [property: Id(4)] long PromptCacheMisses,
    [property: Id(5)] long PromptCacheHitTokens,
    [property: Id(6)] long Steps,
    [property: Id(7)] long GeneratedTokens);

/// <summary>A generation running (or waiting for its shard) on a silo.</summary>
[GenerateSerializer, Immutable, Alias("granary.WorkItem")]
public sealed record WorkItem(
    [property: Id(0)] string JobId,
    [property: Id(1)] string Model,
    [property: Id(2)] int PromptTokens,
    [property: Id(3)] int GeneratedTokens,
    [property: Id(4)] DateTimeOffset StartedAt);

/// <summary>What a silo reports about itself: backend, memory, shards and current work.</summary>
[GenerateSerializer, Immutable, Alias("granary.HostReport")]
public sealed record HostReport(
    [property: Id(0)] string SiloName,
    [property: Id(1)] string Backend,
    [property: Id(2)] HostMemory Memory,
    [property: Id(3)] ShardStatus[] Shards,
    [property: Id(4)] WorkItem[] Work,
    [property: Id(5)] int ModelLoads);

/// <summary>One silo as membership knows it, with its report when it answered.</summary>
[GenerateSerializer, Immutable, Alias("granary.SiloStatusReport")]
public sealed record SiloStatusReport(
    [property: Id(0)] string SiloName,
    [property: Id(1)] string Address,
    [property: Id(2)] string Status,
    [property: Id(3)] HostReport? Host,
    [property: Id(4)] string? Problem);

[GenerateSerializer, Immutable, Alias("granary.ClusterStatus")]
public sealed record ClusterStatus(
    [property: Id(0)] SiloStatusReport[] Silos,
    [property: Id(1)] ModelPlan[] Models,
    [property: Id(2)] DateTimeOffset At);
