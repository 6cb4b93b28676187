// Bus bandwidth of the communicator's collectives next to the plain MPI calls they wrap, measured
// in the same run on the same buffers (so the ratio is the layer's overhead: argument checks,
// the watchdog, the dispatch). One JSON line per (collective, size). Run under mpirun:
//   mpirun --allow-run-as-root --oversubscribe -np 4 comm_bench [--min-bytes B] [--max-bytes B]
//          [--rounds R]
// Bytes are the collective's message size S as in nccl-tests: the all_reduce buffer, the
// all_gather output, the reduce_scatter input, the all_to_all_v bytes sent per rank.
// busbw = S / t × (2(n−1)/n for all_reduce, (n−1)/n otherwise).
// The process keeps freed host memory as grove-worker does (comm/host_allocator.h), so both sides
// measure the collectives a training step sees: with glibc's defaults, the temporary buffer MPI
// allocates per all_reduce above 32 MiB is a fresh mmap every call (2 ranks, 64 MiB on a 2-vCPU
// VM: 0.33 GB/s busbw, against 4.2 GB/s with the heap kept).
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "comm/host_allocator.h"
#include "comm/mpi_communicator.h"

using namespace grove;

namespace {

struct Options {
  int64_t min_bytes = 1 << 10;
  int64_t max_bytes = 64 << 20;
  int rounds = 7;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--min-bytes")
      o.min_bytes = std::atoll(argv[i + 1]);
    else if (k == "--max-bytes")
      o.max_bytes = std::atoll(argv[i + 1]);
    else if (k == "--rounds")
      o.rounds = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      std::exit(2);
    }
  }
  return o;
}

// Seconds per call of `fn`, the slowest rank's view, for `iters` back-to-back calls.
double time_per_call(const std::function<void()>& fn, int iters) {
  MPI_Barrier(MPI_COMM_WORLD);
  double t0 = MPI_Wtime();
  for (int i = 0; i < iters; ++i) fn();
  double t = (MPI_Wtime() - t0) / iters, tmax = 0;
  MPI_Allreduce(&t, &tmax, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return tmax;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
double minimum(const std::vector<double>& v) {
  return *std::min_element(v.begin(), v.end());
}

}  // namespace

int main(int argc, char** argv) {
  const comm::HostAllocatorPolicy allocator = comm::KeepFreedHostMemory();
  comm::MpiSession session(&argc, &argv);
  if (!allocator.applied && session.world_rank() == 0)
    std::fprintf(stderr, "comm_bench: note: %s\n", allocator.reason.c_str());
  const Options opt = parse(argc, argv);
  auto world = session.world();
  const int n = world->size(), rank = world->rank();
  MPI_Comm mpi_comm;  // the baseline runs on its own duplicate, as the communicator does
  MPI_Comm_dup(MPI_COMM_WORLD, &mpi_comm);

  for (int64_t bytes = opt.min_bytes; bytes <= opt.max_bytes; bytes *= 4) {
    const int64_t elems = bytes / 4;  // f32
    const int64_t per_rank = elems / n;
    // Zeros: repeated in-place sums stay finite and free of denormals.
    Tensor full = Tensor::zeros({elems});
    Tensor part = Tensor::zeros({per_rank});
    Tensor full2 = Tensor::zeros({per_rank * n});
    Tensor full3 = Tensor::zeros({per_rank * n});
    std::vector<int64_t> counts(n, per_rank);
    std::vector<int> icounts(n, int(per_rank)), displs(n);
    for (int j = 0; j < n; ++j) displs[j] = int(j * per_rank);
    const int iters = int(std::clamp<int64_t>((int64_t(4) << 20) / bytes, 1, 50));

    struct Case {
      const char* name;
      const char* peer;
      int64_t bytes;
      double factor;
      std::function<void()> ours, plain;
    };
    float* f = full.data<float>();
    float* p = part.data<float>();
    float* f2 = full2.data<float>();
    float* f3 = full3.data<float>();
    const int pr = int(per_rank);
    std::vector<Case> cases = {
        {"all_reduce", "MPI_Allreduce", elems * 4, 2.0 * (n - 1) / n,
         [&] { world->all_reduce(full, comm::ReduceOp::kSum); },
         [&] { MPI_Allreduce(MPI_IN_PLACE, f, int(elems), MPI_FLOAT, MPI_SUM, mpi_comm); }},
        {"all_gather", "MPI_Allgather", per_rank * n * 4, double(n - 1) / n,
         [&] { world->all_gather(part, full2); },
         [&] { MPI_Allgather(p, pr, MPI_FLOAT, f2, pr, MPI_FLOAT, mpi_comm); }},
        {"reduce_scatter", "MPI_Reduce_scatter_block", per_rank * n * 4, double(n - 1) / n,
         [&] { world->reduce_scatter(full2, part, comm::ReduceOp::kSum); },
         [&] { MPI_Reduce_scatter_block(f2, p, pr, MPI_FLOAT, MPI_SUM, mpi_comm); }},
        {"all_to_all_v", "MPI_Alltoallv", per_rank * n * 4, double(n - 1) / n,
         [&] { world->all_to_all_v(full2, counts, full3, counts); },
         [&] {
           MPI_Alltoallv(f2, icounts.data(), displs.data(), MPI_FLOAT, f3, icounts.data(),
                         displs.data(), MPI_FLOAT, mpi_comm);
         }},
    };
    for (const Case& c : cases) {
      std::vector<double> ours, plain;
      c.ours();  // warm-up (first-touch, connection setup)
      c.plain();
      for (int r = 0; r < opt.rounds; ++r) {  // interleaved, so drift hits both alike
        ours.push_back(time_per_call(c.ours, iters));
        plain.push_back(time_per_call(c.plain, iters));
      }
      // Medians give the typical bandwidth; the ratio of minima is the overhead least disturbed
      // by other processes on a shared machine.
      const double t = median(ours), tp = median(plain);
      const double overhead_min = (minimum(ours) / minimum(plain) - 1.0) * 100.0;
      const double bw = double(c.bytes) / t * c.factor / 1e9,
                   bwp = double(c.bytes) / tp * c.factor / 1e9;
      if (rank == 0) {
        std::printf(
            "{\"name\":\"comm/%s\",\"config\":{\"np\":%d,\"bytes\":%lld,\"dtype\":\"f32\","
            "\"backend\":\"mpi\",\"iters\":%d,\"rounds\":%d},\"value\":%.4f,\"unit\":\"GB/s "
            "busbw\","
            "\"time_us\":%.2f,\"peer\":\"%s\",\"peer_value\":%.4f,\"peer_time_us\":%.2f,"
            "\"ratio\":%.4f,\"overhead_pct\":%.2f,\"overhead_pct_min\":%.2f}\n",
            c.name, n, static_cast<long long>(c.bytes), iters, opt.rounds, bw, t * 1e6, c.peer, bwp,
            tp * 1e6, bw / bwp, (t / tp - 1.0) * 100.0, overhead_min);
        std::fflush(stdout);
      }
    }
  }
  MPI_Comm_free(&mpi_comm);
  return 0;
}
