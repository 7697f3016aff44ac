namespace Granary.Models.Transformer;

internal static class DisposableList
{
    /// <summary>Records <paramref name="item"/> so a load that fails part-way can release what it already mapped.</summary>
    public static T Keep<T>(this List<IDisposable> loaded, T item)
        where T : IDisposable
    {
        loaded.Add(item);
        return item;
    }
}
