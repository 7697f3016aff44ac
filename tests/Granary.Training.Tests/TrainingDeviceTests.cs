namespace Granary.Training.Tests;

/// <summary>The choice of device for the matrix products (the GPU itself is tested in Granary.Cuda.Tests).</summary>
public sealed class TrainingDeviceTests
{
    [Fact]
    public void ProductsRunOnTheHostByDefault()
    {
        using var loaded = ReferenceData.LoadModel("qwen3");
        using var model = TrainingModel.Create(loaded.Model, new FineTuneOptions());
        Assert.Equal(TrainingDevice.Cpu, model.Options.Device);
        Assert.Equal("cpu", model.Device);
    }

    [Fact]
    public void GpuOrdinalIsValidatedAndNeedsTheCudaDevice()
    {
        new FineTuneOptions { Device = TrainingDevice.Cuda, CudaDevice = 1 }.Validate();
        Assert.Throws<ArgumentException>(() => new FineTuneOptions { CudaDevice = 0 }.Validate());
        Assert.Throws<ArgumentOutOfRangeException>(() => new FineTuneOptions { Device = TrainingDevice.Cuda, CudaDevice = -1 }.Validate());
        Assert.Throws<ArgumentOutOfRangeException>(() => new FineTuneOptions { Device = (TrainingDevice)7 }.Validate());
    }
}
