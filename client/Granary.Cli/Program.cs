using Granary.Cli;

return await CommandLine.RunAsync(args);
