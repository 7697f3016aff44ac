/*
 * MPI_Allreduce timing peer for `granary-bench collectives`: same sizes, same iteration rule, same reporting.
 * Usage: allreduce_bench SIZE_BYTES[,SIZE_BYTES...] MIN_SECONDS
 * Prints "RESULT <bytes> <seconds per all-reduce>" on rank 0, the slowest rank's mean.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double time_iterations(float *buffer, int count, int iterations)
{
    MPI_Barrier(MPI_COMM_WORLD);
    double start = MPI_Wtime();
    for (int i = 0; i < iterations; i++) {
        MPI_Allreduce(MPI_IN_PLACE, buffer, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    }
    return MPI_Wtime() - start;
}

static int iterations_for(double seconds_each, double seconds)
{
    double iterations = seconds_each > 0 ? seconds / seconds_each : 1000;
    return iterations < 3 ? 3 : iterations > 10000000 ? 10000000 : (int)iterations;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (argc != 3) {
        if (rank == 0) {
            fprintf(stderr, "usage: %s SIZE_BYTES[,SIZE_BYTES...] MIN_SECONDS\n", argv[0]);
        }
        MPI_Finalize();
        return 2;
    }

    double min_seconds = atof(argv[2]);
    char *sizes = strdup(argv[1]);
    int first = 1;
    for (char *token = strtok(sizes, ","); token != NULL; token = strtok(NULL, ","), first = 0) {
        long bytes = atol(token);
        int count = (int)(bytes / sizeof(float));
        float *buffer = malloc(count > 0 ? (size_t)count * sizeof(float) : 1);
        for (int i = 0; i < count; i++) {
            buffer[i] = (float)(rank + i % 7);
        }

        /* Calibrate on rank 0 and share the count, so every rank runs the same number of iterations: runs of a
           quarter of the warm-up to estimate, then a warm-up of about 0.2 s (1 s for the first size), then the timed
           run (the same rule as the Granary side). */
        double warm_up = first ? 1.0 : min_seconds < 0.2 ? min_seconds : 0.2;
        int iterations = iterations_for(time_iterations(buffer, count, 3) / 3, warm_up / 4);
        MPI_Bcast(&iterations, 1, MPI_INT, 0, MPI_COMM_WORLD);
        iterations = iterations_for(time_iterations(buffer, count, iterations) / iterations, warm_up);
        MPI_Bcast(&iterations, 1, MPI_INT, 0, MPI_COMM_WORLD);
        iterations = iterations_for(time_iterations(buffer, count, iterations) / iterations, min_seconds);
        MPI_Bcast(&iterations, 1, MPI_INT, 0, MPI_COMM_WORLD);

        double mean = time_iterations(buffer, count, iterations) / iterations;
        double slowest;
        MPI_Reduce(&mean, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        if (rank == 0) {
            printf("RESULT %ld %.9f\n", bytes, slowest);
            fflush(stdout);
        }
        free(buffer);
    }

    free(sizes);
    MPI_Finalize();
    return 0;
}
