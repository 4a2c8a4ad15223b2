// oneDNN's float32 convolutions as XLA FFI handlers (config.cpu_convolutions = "onednn").
//
// Three handlers, one per part of a convolution, on the tensors as the models hold them
// (activations NHWC, kernels HWIO):
//   OnednnConvFwd(x, w) -> y            forward
//   OnednnConvBwdData(dy, w) -> dx      input gradient (dx's shape comes from the result)
//   OnednnConvBwdWeights(x, dy) -> dw   weight gradient
// and a fourth, OnednnWinogradFwd(x, w) -> y, a 3x3 stride-1 convolution by Winograd's
// algorithm (its section below), which the binding also gives input gradients.
// attributes sh, sw (strides), pt, pb, pl, pr (zero padding: top, bottom, left, right), pool
// (which threads run oneDNN, below) and bf16 (1: the products may take the operands' bfloat16
// roundings, JAX's default_matmul_precision("bfloat16"); on AMX CPUs much faster).
// Activations go to oneDNN in NHWC as they are; the kernel goes through the layout the
// primitive asks for (a reorder per call, both ways for the weight gradient). Primitives are
// built once per shape and kept. With pool = 0 oneDNN runs its own threads (the OpenMP build from
// PyPI, as PyTorch runs it); with pool = 1 it has none: each call splits its work into one part
// per thread of XLA's own pool (the batch, or for the weight gradient of a deep layer the output
// channels) and runs a one-thread primitive on each part there, the kernel reorders split the
// same way, so that oneDNN's threads and XLA's never compete for the cores.
//
// EMOGEN_ONEDNN_STATS=1 prints, at exit, the calls and the time spent inside each handler
// (Winograd's counted as the part they compute, and apart).
// EMOGEN_ONEDNN_VERBOSE=1 prints each primitive's implementation when it is built.

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

extern "C" void omp_set_num_threads(int);
extern "C" int omp_get_max_threads(void);

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum Part { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };

struct Geometry {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr;
  int64_t bf16 = 0;  // float32 tensors, products of their bfloat16 roundings (AMX where present)

  std::string Key(Part part) const {
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "%d:%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld", part, n, h,
                  w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr, bf16);
    return buf;
  }
  memory::desc Src() const { return {{n, c, h, w}, dt::f32, tag::nhwc}; }
  memory::desc Dst() const { return {{n, o, oh, ow}, dt::f32, tag::nhwc}; }
  memory::desc Weights(tag t) const { return {{o, c, kh, kw}, dt::f32, t}; }
};

// One primitive and the kernel layout it wants.
struct Plan {
  dnnl::primitive prim;
  memory::desc kernel;   // the primitive's own kernel layout
  memory::desc scratch;
  bool reorder = false;  // the primitive's kernel layout is not HWIO
  dnnl::reorder to_prim, from_prim;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

std::shared_ptr<Plan> BuildPlan(Part part, const Geometry& g) {
  auto& eng = Engine();
  const memory::dims strides = {g.sh, g.sw}, pad_lo = {g.pt, g.pl}, pad_hi = {g.pb, g.pr};
  // Scratch memory is ours (one buffer per calling thread), so that one primitive can run on
  // several of XLA's threads at once.
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  // JAX's default_matmul_precision("bfloat16"): oneDNN may round the float32 operands to
  // bfloat16 for the products (accumulating in float32), as one TPU pass does.
  if (g.bf16) attr.set_fpmath_mode(dnnl::fpmath_mode::bf16);
  const auto any = g.Weights(tag::any), hwio = g.Weights(tag::hwio);
  auto fwd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, g.Src(), any,
      g.Dst(), strides, pad_lo, pad_hi, attr);
  auto plan = std::make_shared<Plan>();
  std::string impl;
  if (part == kFwd) {
    plan->prim = dnnl::convolution_forward(fwd);
    plan->kernel = fwd.weights_desc();
    plan->scratch = fwd.scratchpad_desc();
    impl = fwd.impl_info_str();
  } else if (part == kBwdData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, g.Src(), any, g.Dst(), strides, pad_lo, pad_hi,
        fwd, attr);
    plan->prim = dnnl::convolution_backward_data(pd);
    plan->kernel = pd.weights_desc();
    plan->scratch = pd.scratchpad_desc();
    impl = pd.impl_info_str();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, g.Src(), any, g.Dst(), strides, pad_lo, pad_hi,
        fwd, attr);
    plan->prim = dnnl::convolution_backward_weights(pd);
    plan->kernel = pd.diff_weights_desc();
    plan->scratch = pd.scratchpad_desc();
    impl = pd.impl_info_str();
  }
  plan->reorder = plan->kernel != hwio;
  if (plan->reorder) {
    plan->to_prim = dnnl::reorder(dnnl::reorder::primitive_desc(eng, hwio, eng, plan->kernel));
    plan->from_prim = dnnl::reorder(dnnl::reorder::primitive_desc(eng, plan->kernel, eng, hwio));
  }
  if (std::getenv("EMOGEN_ONEDNN_VERBOSE"))
    std::fprintf(stderr, "onednn_conv: %s -> %s%s\n", g.Key(part).c_str(), impl.c_str(),
                 plan->reorder ? " (kernel reordered)" : "");
  return plan;
}

// `one_thread`: a plan for a call on XLA's pool (built on a thread whose OpenMP team is one
// thread, so planned for one), kept apart from the plans for oneDNN's own threads.
std::shared_ptr<Plan> GetPlan(Part part, const Geometry& g, bool one_thread) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::shared_ptr<Plan>> plans;
  const std::string key = g.Key(part) + (one_thread ? "/1" : "");
  std::lock_guard<std::mutex> lock(mu);
  auto& plan = plans[key];
  if (!plan) plan = BuildPlan(part, g);
  return plan;
}

// A growing 64-byte-aligned buffer, one per thread and use.
struct Buffer {
  void* data = nullptr;
  size_t size = 0;
  ~Buffer() { std::free(data); }
  void* Get(size_t want) {
    if (want > size) {
      std::free(data);
      size = (want + 63) / 64 * 64;
      data = std::aligned_alloc(64, size);
      if (data == nullptr) {
        size = 0;
        throw std::bad_alloc();
      }
    }
    return data;
  }
};
thread_local Buffer scratch_buffer, kernel_buffer;

struct Stats {
  std::atomic<int64_t> calls[3] = {}, nanos[3] = {}, layout_nanos = 0;
  std::atomic<int64_t> winograd_calls = 0, winograd_nanos = 0;
  ~Stats() {
    if (!std::getenv("EMOGEN_ONEDNN_STATS")) return;
    std::fprintf(stderr, "onednn_conv kernel layouts: %.1f ms (inside the calls above)\n",
                 layout_nanos / 1e6);
    std::fprintf(stderr,
                 "onednn_conv stats: forward %ld calls %.1f ms, input gradient %ld calls %.1f ms, "
                 "weight gradient %ld calls %.1f ms\n",
                 calls[0].load(), nanos[0] / 1e6, calls[1].load(), nanos[1] / 1e6,
                 calls[2].load(), nanos[2] / 1e6);
    std::fprintf(stderr, "onednn_conv stats: of these by Winograd %ld calls %.1f ms\n",
                 winograd_calls.load(), winograd_nanos / 1e6);
  }
} stats;

// Runs the plan's primitive of `part` on (src, kernel, dst) as the part names them: x, w, y
// (forward), dx, w, dy (input gradient), x, dw, dy (weight gradient).
void Execute(Part part, const Plan& plan, dnnl::stream& stream, memory& src, memory& kernel,
             memory& dst, memory& scratch) {
  const int s = part == kBwdData ? DNNL_ARG_DIFF_SRC : DNNL_ARG_SRC;
  const int k = part == kBwdWeights ? DNNL_ARG_DIFF_WEIGHTS : DNNL_ARG_WEIGHTS;
  const int d = part == kFwd ? DNNL_ARG_DST : DNNL_ARG_DIFF_DST;
  plan.prim.execute(stream, {{s, src}, {k, kernel}, {d, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
}

void Count(Part part, std::chrono::steady_clock::time_point start) {
  stats.nanos[part] += std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::steady_clock::now() - start).count();
  stats.calls[part]++;
}

// kFwd: a = x, b = w, out = y.  kBwdData: a = dy, b = w, out = dx.  kBwdWeights: a = x, b = dy,
// out = dw.
ffi::Error Run(Part part, const Geometry& g, float* a, float* b, float* out) {
  const auto start = std::chrono::steady_clock::now();
  auto plan = GetPlan(part, g, false);
  auto& eng = Engine();
  dnnl::stream stream(eng);
  float* src = part == kBwdData ? out : a;
  float* dst = part == kFwd ? out : (part == kBwdData ? a : b);
  float* kernel = part == kBwdWeights ? out : b;
  memory src_m(g.Src(), eng, src), dst_m(g.Dst(), eng, dst);
  memory user_kernel(g.Weights(tag::hwio), eng, kernel), prim_kernel = user_kernel;
  memory scratch(plan->scratch, eng, scratch_buffer.Get(plan->scratch.get_size() + 1));
  if (plan->reorder) {
    prim_kernel = memory(plan->kernel, eng, kernel_buffer.Get(plan->kernel.get_size()));
    if (part != kBwdWeights) plan->to_prim.execute(stream, user_kernel, prim_kernel);
  }
  Execute(part, *plan, stream, src_m, prim_kernel, dst_m, scratch);
  if (part == kBwdWeights && plan->reorder) plan->from_prim.execute(stream, prim_kernel, user_kernel);
  stream.wait();
  Count(part, start);
  return ffi::Error::Success();
}

// A one-thread OpenMP team for oneDNN on this thread while the scope lasts (OpenMP keeps the
// setting per thread; primitives built under it are planned for one thread). The thread's own
// setting comes back after: XLA may call a handler on the caller's thread, where PyTorch or the
// user's code keeps theirs.
class OneOmpThread {
 public:
  OneOmpThread() : before_(omp_get_max_threads()) {
    if (before_ != 1) omp_set_num_threads(1);
  }
  ~OneOmpThread() {
    if (before_ != 1) omp_set_num_threads(before_);
  }

 private:
  int before_;
};

thread_local Buffer slices_buffer;

// Runs fn(0) .. fn(count - 1) on XLA's pool and the calling thread; returns when all are done.
// The calling thread takes any index that no pool thread has started, so a busy pool only
// delays the call, never blocks it. A task that the pool starts after the return finds no index
// left and touches only `shared`, which it co-owns, never `fn`.
template <typename Fn>
void ParallelFor(ffi::ThreadPool& pool, int64_t count, const Fn& fn) {
  if (count == 1) return fn(0);
  struct Shared {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mu;
    std::exception_ptr error;  // the first part's failure, rethrown on the calling thread
  };
  auto shared = std::make_shared<Shared>();
  auto drain = [shared, count, &fn] {
    for (int64_t i; (i = shared->next++) < count;) {
      try {
        OneOmpThread one_thread;
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(shared->mu);
        if (!shared->error) shared->error = std::current_exception();
      }
      shared->done++;
    }
  };
  for (int64_t i = 1; i < count; ++i) pool.Schedule(decltype(drain)(drain));
  drain();
  while (shared->done.load() < count) std::this_thread::yield();
  if (shared->error) std::rethrow_exception(shared->error);
}

// Output channels [first, last) of kernel layout `desc` (its first dimension: a convolution's
// output channels, the Winograd matmuls' positions), for splitting a reorder: the bounds fall on
// the layout's blocks of that dimension.
memory::desc OutputChannels(const memory::desc& desc, int64_t first, int64_t last) {
  auto dims = desc.get_dims();
  const int64_t o = dims[0];
  dims[0] = std::min(last, o) - first;
  memory::dims offsets(dims.size(), 0);
  offsets[0] = first;
  return desc.submemory_desc(dims, offsets);
}

// The kernel reorder from -> to (one of them `blocked`, the primitive's layout) split over
// output channels onto the pool.
void Reorder(ffi::ThreadPool& pool, int64_t slices, const memory::desc& from, void* from_data,
             const memory::desc& to, void* to_data, const memory::desc& blocked) {
  auto& eng = Engine();
  int64_t block = 1;
  const auto blks = blocked.get_inner_blks(), idxs = blocked.get_inner_idxs();
  for (size_t i = 0; i < blks.size(); ++i)
    if (idxs[i] == 0) block *= blks[i];
  const int64_t o = from.get_dims()[0];
  const int64_t per = (o + slices * block - 1) / (slices * block) * block;  // a multiple of block
  const int64_t parts = (o + per - 1) / per;
  ParallelFor(pool, parts, [&](int64_t i) {
    const auto f = parts == 1 ? from : OutputChannels(from, i * per, (i + 1) * per);
    const auto t = parts == 1 ? to : OutputChannels(to, i * per, (i + 1) * per);
    memory fm(f, eng, from_data), tm(t, eng, to_data);
    dnnl::stream stream(eng);
    dnnl::reorder(fm, tm).execute(stream, fm, tm);
    stream.wait();
  });
}

thread_local Buffer dy_buffer;

// The weight gradient of a layer whose kernel outweighs its output gradient (the deep layers:
// many channels, few pixels) split over output channels instead of the batch: each thread
// copies its channels of dy into a dense buffer, computes those channels' gradient on its own
// and reorders it into its part of dw. Nothing to sum, and the kernel is written once.
void WeightGradByChannels(const Geometry& g, float* x, float* dy, float* dw,
                          ffi::ThreadPool& pool, int64_t threads) {
  auto& eng = Engine();
  const int64_t per = std::max<int64_t>(16, (g.o + threads * 16 - 1) / (threads * 16) * 16);
  const int64_t parts = (g.o + per - 1) / per;
  std::vector<std::shared_ptr<Plan>> plans;
  std::vector<Geometry> geoms;
  for (int64_t i = 0; i < parts; ++i) {
    Geometry sg = g;
    sg.o = std::min(g.o, (i + 1) * per) - i * per;
    geoms.push_back(sg);
    plans.push_back(GetPlan(kBwdWeights, sg, true));
  }
  const auto hwio = g.Weights(tag::hwio);
  const int64_t rows = g.n * g.oh * g.ow;
  ParallelFor(pool, parts, [&](int64_t i) {
    const Geometry& sg = geoms[i];
    const Plan& plan = *plans[i];
    float* dense = static_cast<float*>(dy_buffer.Get(rows * sg.o * sizeof(float)));
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(dense + r * sg.o, dy + r * g.o + i * per, sg.o * sizeof(float));
    dnnl::stream stream(eng);
    memory src_m(sg.Src(), eng, x), dst_m(sg.Dst(), eng, dense);
    memory scratch(plan.scratch, eng, scratch_buffer.Get(plan.scratch.get_size() + 1));
    // The slice's gradient in the primitive's layout, then into its output channels of dw.
    memory k_m(plan.kernel, eng, kernel_buffer.Get(plan.kernel.get_size()));
    memory part_m(OutputChannels(hwio, i * per, (i + 1) * per), eng, dw);
    Execute(kBwdWeights, plan, stream, src_m, k_m, dst_m, scratch);
    dnnl::reorder(k_m, part_m).execute(stream, k_m, part_m);
    stream.wait();
  });
}

// One slice of the batch per thread of XLA's pool, a one-thread primitive each; the kernel's
// reorders and the weight gradient's sum over the slices are split over the pool too.
ffi::Error RunOnXlaThreads(Part part, const Geometry& g, float* a, float* b, float* out,
                           ffi::ThreadPool pool) {
  const auto start = std::chrono::steady_clock::now();
  OneOmpThread one_thread;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  if (part == kBwdWeights && threads > 1 && g.o >= 32 &&
      g.kh * g.kw * g.c * g.o > g.n * g.oh * g.ow * g.o) {
    WeightGradByChannels(g, a, b, out, pool, threads);
    Count(part, start);
    return ffi::Error::Success();
  }
  const int64_t slices = std::min<int64_t>(threads, g.n);
  struct Slice {
    Geometry g;
    int64_t first;
    std::shared_ptr<Plan> plan;
  };
  std::vector<Slice> parts;
  for (int64_t i = 0, first = 0; i < slices; ++i) {
    Geometry sg = g;
    sg.n = g.n / slices + (i < g.n % slices ? 1 : 0);
    parts.push_back({sg, first, GetPlan(part, sg, true)});
    first += sg.n;
  }
  auto& eng = Engine();
  const auto hwio = g.Weights(tag::hwio);
  const auto& kdesc = parts[0].plan->kernel;  // the same layout for every slice size
  for (auto& s : parts)
    if (s.plan->kernel != kdesc)
      return ffi::Error::Internal("onednn_conv: the slices want different kernel layouts");
  const bool reorder = parts[0].plan->reorder;
  const size_t kbytes = kdesc.get_size();
  float* kernel = part == kBwdWeights ? out : b;
  // The kernel in the primitives' layout: shared by the slices (forward, input gradient), or one
  // per slice, summed afterwards (weight gradient).
  char* kmem = static_cast<char*>(part == kBwdWeights ? slices_buffer.Get(kbytes * slices)
                                                      : kernel_buffer.Get(kbytes));
  const auto t0 = std::chrono::steady_clock::now();
  if (part != kBwdWeights && reorder) Reorder(pool, threads, hwio, kernel, kdesc, kmem, kdesc);
  auto layout = std::chrono::steady_clock::now() - t0;
  const int64_t in_row = g.h * g.w * g.c, out_row = g.oh * g.ow * g.o;
  ParallelFor(pool, slices, [&](int64_t i) {
    const Slice& s = parts[i];
    dnnl::stream stream(eng);
    float* src = (part == kBwdData ? out : a) + s.first * in_row;
    float* dst = (part == kFwd ? out : (part == kBwdData ? a : b)) + s.first * out_row;
    memory src_m(s.g.Src(), eng, src), dst_m(s.g.Dst(), eng, dst);
    void* k = part == kBwdWeights ? kmem + i * kbytes : (reorder ? kmem : static_cast<void*>(kernel));
    memory k_m(reorder ? kdesc : hwio, eng, k);
    memory scratch(s.plan->scratch, eng, scratch_buffer.Get(s.plan->scratch.get_size() + 1));
    Execute(part, *s.plan, stream, src_m, k_m, dst_m, scratch);
    stream.wait();
  });
  if (part == kBwdWeights) {
    const auto t1 = std::chrono::steady_clock::now();
    // Sum the slices' kernels into the first (elementwise, so any layout), in ranges.
    const int64_t count = kbytes / sizeof(float), per = (count + threads - 1) / threads;
    float* sum = reinterpret_cast<float*>(kmem);
    if (slices > 1)
      ParallelFor(pool, threads, [&](int64_t r) {
        const int64_t lo = r * per, hi = std::min(count, lo + per);
        for (int64_t i = 1; i < slices; ++i) {
          const float* other = reinterpret_cast<const float*>(kmem + i * kbytes);
          for (int64_t j = lo; j < hi; ++j) sum[j] += other[j];
        }
      });
    if (reorder)
      Reorder(pool, threads, kdesc, kmem, hwio, out, kdesc);
    else
      std::memcpy(out, kmem, kbytes);
    layout += std::chrono::steady_clock::now() - t1;
  }
  stats.layout_nanos += std::chrono::duration_cast<std::chrono::nanoseconds>(layout).count();
  Count(part, start);
  return ffi::Error::Success();
}

Geometry MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                      ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                      int64_t pl, int64_t pr, int64_t bf16) {
  return {x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2], sh, sw, pt, pb, pl, pr, bf16};
}

using F32 = ffi::Buffer<ffi::F32>;

// One part on (a, b) -> out, on XLA's pool or oneDNN's threads; oneDNN's exceptions (it throws
// dnnl::error) become an FFI error, which jax raises, instead of ending the process.
ffi::Error Dispatch(Part part, const Geometry& g, float* a, float* b, float* out, int64_t on_pool,
                    ffi::ThreadPool& pool) {
  try {
    return on_pool ? RunOnXlaThreads(part, g, a, b, out, pool) : Run(part, g, a, b, out);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("onednn_conv: ") + e.what());
  }
}

ffi::Error Fwd(ffi::ThreadPool pool, F32 x, F32 w, ffi::ResultBuffer<ffi::F32> y, int64_t sh,
               int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t on_pool,
               int64_t bf16) {
  const auto g =
      MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr, bf16);
  return Dispatch(kFwd, g, x.typed_data(), w.typed_data(), y->typed_data(), on_pool, pool);
}

ffi::Error BwdData(ffi::ThreadPool pool, F32 dy, F32 w, ffi::ResultBuffer<ffi::F32> dx, int64_t sh,
                   int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t on_pool,
                   int64_t bf16) {
  const auto g =
      MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr, bf16);
  return Dispatch(kBwdData, g, dy.typed_data(), w.typed_data(), dx->typed_data(), on_pool, pool);
}

ffi::Error BwdWeights(ffi::ThreadPool pool, F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dw,
                      int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                      int64_t on_pool, int64_t bf16) {
  const auto g =
      MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr, bf16);
  return Dispatch(kBwdWeights, g, x.typed_data(), dy.typed_data(), dw->typed_data(), on_pool, pool);
}


// ------------------------------------------------------------------------------------ Winograd
// OnednnWinogradFwd(x, w) -> y, attributes pt, pb, pl, pr, tile (2 or 4), block (tiles per
// matmul), part (what the call computes, for the stats: 0 a forward, 1 an input gradient).
// A 3x3 stride-1 convolution by Winograd's minimal filtering F(m x m, 3 x 3): every m x m block
// of outputs comes from the (m + 2) x (m + 2) block of inputs under it (a "tile") as
//   Y = AT [ sum over input channels of (G g GT) .* (BT d B) ] A,
// i.e. A * A = (m + 2)^2 matmuls (tiles x Cin) @ (Cin x Cout), one per tile position: (m + 2)^2 /
// (9 m^2) of the direct convolution's products (1/4 for F(4x4), 4/9 for F(2x2)). oneDNN 3.2 has
// no float32 Winograd on x86, so the three transforms are ours (vectorised over the channels,
// which NHWC keeps contiguous; compiled for AVX-512, the only CPUs that route here) and the
// matmuls are oneDNN's. Interpolation points 0, 1, -1, (2, -2,) infinity: float32 results within
// about ten times the direct convolution's rounding (docs/design.md has the figures). Float32
// only: the transformed operands' bfloat16 roundings lose too much (5.8 % of the largest output,
// measured).

#define WINO_TARGET __attribute__((target("avx512f,fma"), optimize("O3")))

template <int A>
struct Wino;
template <>
struct Wino<4> {  // F(2x2, 3x3)
  static constexpr int M = 2;
  static constexpr float BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  static constexpr double G[4][3] = {{1, 0, 0}, {.5, .5, .5}, {.5, -.5, .5}, {0, 0, 1}};
  static constexpr float AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
};
template <>
struct Wino<6> {  // F(4x4, 3x3)
  static constexpr int M = 4;
  static constexpr float BT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0},
                                     {0, 4, -4, -1, 1, 0}, {0, -2, -1, 2, 1, 0},
                                     {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
  static constexpr double G[6][3] = {{1 / 4., 0, 0},
                                     {-1 / 6., -1 / 6., -1 / 6.},
                                     {-1 / 6., 1 / 6., -1 / 6.},
                                     {1 / 24., 1 / 12., 1 / 6.},
                                     {1 / 24., -1 / 12., 1 / 6.},
                                     {0, 0, 1}};
  static constexpr float AT[4][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0},
                                     {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
};

constexpr int kLanes = 64;  // channels per step of the transforms (four AVX-512 vectors)

// Which tiles a call covers: tile t is image t / (th * tw), block row (t / tw) % th, column t % tw.
struct Tiles {
  int64_t th, tw, count;
};

// out[r][j] = sum_i mat[r][i] in[i][j] for each of kLanes channels: one side of a transform (the
// zero coefficients drop out once the loops are unrolled).
template <int R, int I, int J, typename T>
WINO_TARGET __attribute__((always_inline)) inline void LeftMultiply(
    const T (&mat)[R][I], const float (&in)[I][J][kLanes], float (&out)[R][J][kLanes]) {
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int j = 0; j < J; ++j) {
      float* o = out[r][j];
      for (int e = 0; e < kLanes; ++e) o[e] = 0;
      #pragma GCC unroll 8
      for (int i = 0; i < I; ++i) {
        const float c = static_cast<float>(mat[r][i]);
        if (c == 0) continue;
        for (int e = 0; e < kLanes; ++e) o[e] += c * in[i][j][e];
      }
    }
}

// out = sum_i coef[i] in[i] for each of kLanes channels: the other side of a transform, one row.
template <int I, typename T>
WINO_TARGET __attribute__((always_inline)) inline void Combine(const T (&coef)[I],
                                                               const float (&in)[I][kLanes],
                                                               float (&out)[kLanes]) {
  for (int e = 0; e < kLanes; ++e) out[e] = 0;
  #pragma GCC unroll 8
  for (int i = 0; i < I; ++i) {
    const float c = static_cast<float>(coef[i]);
    if (c == 0) continue;
    for (int e = 0; e < kLanes; ++e) out[e] += c * in[i][e];
  }
}

// base[(r * B + b) * stride + e] = (in mat^T)[r][b][e] for e < count: a transform's last side,
// position p = r * B + b of the result `stride` floats from the last.
template <int R, int B, int I, typename T>
WINO_TARGET __attribute__((always_inline)) inline void StoreRightProduct(
    const T (&mat)[B][I], const float (&in)[R][I][kLanes], float* base, int64_t stride,
    int64_t count) {
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int b = 0; b < B; ++b) {
      alignas(64) float out[kLanes];
      Combine(mat[b], in[r], out);
      float* dst = base + (r * B + b) * stride;
      for (int64_t e = 0; e < count; ++e) dst[e] = out[e];
    }
}

// dst = the first `count` of src's floats, zeros after them (none from src where count is 0).
WINO_TARGET __attribute__((always_inline)) inline void LoadLanes(const float* src, int64_t count,
                                                                 float (&dst)[kLanes]) {
  if (count == kLanes) {
    for (int e = 0; e < kLanes; ++e) dst[e] = src[e];
    return;
  }
  for (int e = 0; e < kLanes; ++e) dst[e] = 0;
  for (int64_t e = 0; e < count; ++e) dst[e] = src[e];
}

// Tile `tile`'s image and the first output row and column of its m x m block.
struct TileAt {
  int64_t n, row, col;
  TileAt(const Tiles& t, int64_t tile, int m)
      : n(tile / (t.th * t.tw)), row((tile % (t.th * t.tw)) / t.tw * m), col(tile % t.tw * m) {}
};

// U[p] (Cin x Cout, p = u * A + v) = sum_ij G[u][i] G[v][j] w[i][j] for the kernel's elements
// [first, last) of each (Cin x Cout) slice (HWIO: w[i][j] is one such slice).
template <int A>
WINO_TARGET void KernelTransform(const float* w, int64_t co, int64_t first, int64_t last,
                                 float* u) {
  alignas(64) float taps[3][3][kLanes], rows[A][3][kLanes];
  for (int64_t e0 = first; e0 < last; e0 += kLanes) {
    const int64_t n = std::min<int64_t>(kLanes, last - e0);
    #pragma GCC unroll 8
    for (int i = 0; i < 3; ++i)
      #pragma GCC unroll 8
      for (int j = 0; j < 3; ++j) LoadLanes(w + (i * 3 + j) * co + e0, n, taps[i][j]);
    LeftMultiply(Wino<A>::G, taps, rows);  // G w
    StoreRightProduct(Wino<A>::G, rows, u + e0, co, n);  // (G w) GT
  }
}

// V[p][k] (Cin) = (BT d B)[p] of tile first + k, for k < count, rows of a (A*A, T, Cin) buffer.
template <int A>
WINO_TARGET void InputTransform(const Geometry& g, const Tiles& t, const float* x, int64_t first,
                                int64_t count, int64_t rows, float* v) {
  constexpr int M = Wino<A>::M;
  alignas(64) float d[A][A][kLanes], s[A][A][kLanes];
  const int64_t c = g.c;
  for (int64_t k = 0; k < count; ++k) {
    const TileAt at(t, first + k, M);
    const int64_t y0 = at.row - g.pt, x0 = at.col - g.pl;
    for (int64_t c0 = 0; c0 < c; c0 += kLanes) {
      const int64_t cb = std::min<int64_t>(kLanes, c - c0);
      #pragma GCC unroll 8
      for (int i = 0; i < A; ++i)
        #pragma GCC unroll 8
        for (int j = 0; j < A; ++j) {  // the input under the tile, zeros in the padding
          const int64_t yy = y0 + i, xx = x0 + j;
          const bool inside = yy >= 0 && yy < g.h && xx >= 0 && xx < g.w;
          LoadLanes(inside ? x + ((at.n * g.h + yy) * g.w + xx) * c + c0 : nullptr,
                    inside ? cb : 0, d[i][j]);
        }
      LeftMultiply(Wino<A>::BT, d, s);                                // s = BT d
      StoreRightProduct(Wino<A>::BT, s, v + k * c + c0, rows * c, cb);  // (BT d) B
    }
  }
}

// y's m x m block of tile first + k = AT m[.][k] A, from the rows of a (A*A, T, Cout) buffer.
template <int A>
WINO_TARGET void OutputTransform(const Geometry& g, const Tiles& t, const float* m, int64_t first,
                                 int64_t count, int64_t rows, float* y) {
  constexpr int M = Wino<A>::M;
  alignas(64) float q[A][A][kLanes], s[M][A][kLanes];
  const int64_t o = g.o;
  for (int64_t k = 0; k < count; ++k) {
    const TileAt at(t, first + k, M);
    const int64_t n = at.n, y0 = at.row, x0 = at.col;
    for (int64_t o0 = 0; o0 < o; o0 += kLanes) {
      const int64_t ob = std::min<int64_t>(kLanes, o - o0);
      #pragma GCC unroll 8
      for (int a = 0; a < A; ++a)
        #pragma GCC unroll 8
        for (int b = 0; b < A; ++b) LoadLanes(m + ((a * A + b) * rows + k) * o + o0, ob, q[a][b]);
      LeftMultiply(Wino<A>::AT, q, s);  // s = AT q
      #pragma GCC unroll 8
      for (int i = 0; i < M; ++i) {  // (AT q) A
        if (y0 + i >= g.oh) break;
        #pragma GCC unroll 8
        for (int j = 0; j < M; ++j) {
          if (x0 + j >= g.ow) break;
          alignas(64) float out[kLanes];
          Combine(Wino<A>::AT[j], s[i], out);
          float* dst = y + ((n * g.oh + y0 + i) * g.ow + x0 + j) * o + o0;
          for (int e = 0; e < ob; ++e) dst[e] = out[e];
        }
      }
    }
  }
}

// The batched matmul (A*A, T, Cin) @ (A*A, Cin, Cout) of one block of T tiles, for one thread,
// and the layout it wants the transformed kernel in.
struct WinoPlan {
  dnnl::matmul prim;
  memory::desc src, plain_kernel, kernel, dst, scratch;
  bool reorder = false;
};

std::shared_ptr<WinoPlan> GetWinoPlan(int64_t positions, int64_t rows, int64_t c, int64_t o) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::shared_ptr<WinoPlan>> plans;
  char key[128];
  std::snprintf(key, sizeof key, "%ld,%ld,%ld,%ld", positions, rows, c, o);
  std::lock_guard<std::mutex> lock(mu);
  auto& plan = plans[key];
  if (plan) return plan;
  auto& eng = Engine();
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const memory::desc src({positions, rows, c}, dt::f32, tag::abc),
      any({positions, c, o}, dt::f32, tag::any), dst({positions, rows, o}, dt::f32, tag::abc);
  auto pd = dnnl::matmul::primitive_desc(eng, src, any, dst, attr);
  plan = std::make_shared<WinoPlan>();
  plan->prim = dnnl::matmul(pd);
  plan->src = src;
  plan->dst = dst;
  plan->plain_kernel = memory::desc({positions, c, o}, dt::f32, tag::abc);
  plan->kernel = pd.weights_desc();
  plan->scratch = pd.scratchpad_desc();
  plan->reorder = plan->kernel != plan->plain_kernel;
  if (std::getenv("EMOGEN_ONEDNN_VERBOSE"))
    std::fprintf(stderr, "onednn_conv: winograd matmul %s -> %s%s\n", key,
                 pd.impl_info_str(), plan->reorder ? " (kernel reordered)" : "");
  return plan;
}

thread_local Buffer wino_v_buffer, wino_m_buffer, wino_u_buffer;

// y = conv(x, w) (3x3, stride 1) by F(m x m, 3 x 3), A = m + 2, in blocks of `block` tiles
// spread over XLA's pool: each thread transforms its block's tiles, runs the one-thread
// matmul on them and writes their outputs, all within its own caches.
template <int A>
ffi::Error RunWinograd(const Geometry& g, float* x, float* w, float* y, ffi::ThreadPool& pool,
                       int64_t block, Part role) {
  const auto start = std::chrono::steady_clock::now();
  constexpr int M = Wino<A>::M, P = A * A;
  OneOmpThread one_thread;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  Tiles t;
  t.th = (g.oh + M - 1) / M;
  t.tw = (g.ow + M - 1) / M;
  t.count = g.n * t.th * t.tw;
  // Blocks of at most `block` tiles, as many for every thread where the tiles allow (a thread
  // with one more block than the others would set the call's time). Rounding the rows up can
  // leave the last planned blocks without tiles: only the `blocks` that have some are run.
  const int64_t planned = ((t.count + block - 1) / block + threads - 1) / threads * threads;
  const int64_t rows = (t.count + planned - 1) / planned;
  const int64_t blocks = (t.count + rows - 1) / rows;
  auto plan = GetWinoPlan(P, rows, g.c, g.o);
  auto& eng = Engine();
  // The kernel's transform, split over its elements, then into the matmul's layout.
  const int64_t co = g.c * g.o;
  float* u = static_cast<float*>(wino_u_buffer.Get(P * co * sizeof(float)));
  const int64_t per = (co + threads * kLanes - 1) / (threads * kLanes) * kLanes;
  ParallelFor(pool, (co + per - 1) / per, [&](int64_t i) {
    KernelTransform<A>(w, co, i * per, std::min(co, (i + 1) * per), u);
  });
  void* kernel = u;
  if (plan->reorder) {  // split over the positions, as the convolutions' over output channels
    kernel = kernel_buffer.Get(plan->kernel.get_size());
    Reorder(pool, threads, plan->plain_kernel, u, plan->kernel, kernel, plan->kernel);
  }
  std::atomic<int64_t> next{0};
  ParallelFor(pool, std::min(threads, blocks), [&](int64_t) {
    float* v = static_cast<float*>(wino_v_buffer.Get(P * rows * g.c * sizeof(float)));
    float* m = static_cast<float*>(wino_m_buffer.Get(P * rows * g.o * sizeof(float)));
    dnnl::stream stream(eng);
    memory v_m(plan->src, eng, v), m_m(plan->dst, eng, m), k_m(plan->kernel, eng, kernel);
    memory scratch(plan->scratch, eng, scratch_buffer.Get(plan->scratch.get_size() + 1));
    for (int64_t b; (b = next++) < blocks;) {
      const int64_t first = b * rows, count = std::min(rows, t.count - first);
      // Rows past the last tile: zeros, not whatever the buffer held (never read back).
      if (count < rows)
        for (int p = 0; p < P; ++p)
          std::memset(v + (p * rows + count) * g.c, 0, (rows - count) * g.c * sizeof(float));
      InputTransform<A>(g, t, x, first, count, rows, v);
      plan->prim.execute(stream, {{DNNL_ARG_SRC, v_m}, {DNNL_ARG_WEIGHTS, k_m},
                                  {DNNL_ARG_DST, m_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
      stream.wait();
      OutputTransform<A>(g, t, m, first, count, rows, y);
    }
  });
  Count(role, start);
  stats.winograd_calls++;
  stats.winograd_nanos += std::chrono::duration_cast<std::chrono::nanoseconds>(
                              std::chrono::steady_clock::now() - start).count();
  return ffi::Error::Success();
}

ffi::Error WinogradFwd(ffi::ThreadPool pool, F32 x, F32 w, ffi::ResultBuffer<ffi::F32> y,
                       int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t tile,
                       int64_t block, int64_t part) {
  const auto g =
      MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), 1, 1, pt, pb, pl, pr, 0);
  if (g.kh != 3 || g.kw != 3 || !(tile == 2 || tile == 4) || block < 1)
    return ffi::Error::InvalidArgument(
        "onednn_conv: Winograd takes 3x3 kernels, tiles 2 or 4, blocks of at least 1 tile");
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("fma"))
    return ffi::Error::InvalidArgument("onednn_conv: Winograd's transforms need AVX-512");
  if (g.n * g.oh * g.ow * g.o == 0) return ffi::Error::Success();  // nothing to write
  if (g.c == 0) {  // no input channels: a sum of nothing
    std::memset(y->typed_data(), 0, g.n * g.oh * g.ow * g.o * sizeof(float));
    return ffi::Error::Success();
  }
  try {
    const Part role = part == 1 ? kBwdData : kFwd;
    float *xs = x.typed_data(), *ws = w.typed_data(), *ys = y->typed_data();
    return tile == 4 ? RunWinograd<6>(g, xs, ws, ys, pool, block, role)
                     : RunWinograd<4>(g, xs, ws, ys, pool, block, role);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("onednn_conv: ") + e.what());
  }
}

}  // namespace

#define ONEDNN_CONV_BINDING                                                                    \
  ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Ret<F32>().Attr<int64_t>("sh").Attr<int64_t>("sw")   \
      .Attr<int64_t>("pt").Attr<int64_t>("pb").Attr<int64_t>("pl").Attr<int64_t>("pr")   \
      .Attr<int64_t>("pool").Attr<int64_t>("bf16")

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvFwd, Fwd, ONEDNN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdData, BwdData, ONEDNN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdWeights, BwdWeights, ONEDNN_CONV_BINDING);

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnWinogradFwd, WinogradFwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Ret<F32>()
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pb")
                                  .Attr<int64_t>("pl")
                                  .Attr<int64_t>("pr")
                                  .Attr<int64_t>("tile")
                                  .Attr<int64_t>("block")
                                  .Attr<int64_t>("part"));
