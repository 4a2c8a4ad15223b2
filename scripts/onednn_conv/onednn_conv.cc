// oneDNN's float32 convolutions as XLA FFI handlers, for scripts/bench_onednn.py.
//
// Three handlers, one per part of a convolution, on the tensors as the models hold them
// (activations NHWC, kernels HWIO):
//   OnednnConvFwd(x, w) -> y            forward
//   OnednnConvBwdData(dy, w) -> dx      input gradient (dx's shape comes from the result)
//   OnednnConvBwdWeights(x, dy) -> dw   weight gradient
// attributes sh, sw (strides) and pt, pb, pl, pr (zero padding: top, bottom, left, right).
// Activations go to oneDNN in NHWC as they are; the kernel goes through the layout the
// primitive asks for (a reorder per call, both ways for the weight gradient). Primitives are
// built once per shape and kept. oneDNN runs its own threads (the OpenMP build from PyPI).
//
// EMOGEN_ONEDNN_STATS=1 prints, at exit, the calls and the time spent inside each handler.
// EMOGEN_ONEDNN_VERBOSE=1 prints each primitive's implementation when it is built.

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum Part { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };

struct Geometry {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr;

  std::string Key(Part part) const {
    char buf[320];
    std::snprintf(buf, sizeof buf, "%d:%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld",
                  part, n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr);
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

std::shared_ptr<Plan> GetPlan(Part part, const Geometry& g) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::shared_ptr<Plan>> plans;
  const std::string key = g.Key(part);
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
    }
    return data;
  }
};
thread_local Buffer scratch_buffer, kernel_buffer;

struct Stats {
  std::atomic<int64_t> calls[3] = {}, nanos[3] = {};
  ~Stats() {
    if (!std::getenv("EMOGEN_ONEDNN_STATS")) return;
    std::fprintf(stderr,
                 "onednn_conv stats: forward %ld calls %.1f ms, input gradient %ld calls %.1f ms, "
                 "weight gradient %ld calls %.1f ms\n",
                 calls[0].load(), nanos[0] / 1e6, calls[1].load(), nanos[1] / 1e6,
                 calls[2].load(), nanos[2] / 1e6);
  }
} stats;

// kFwd: a = x, b = w, out = y.  kBwdData: a = dy, b = w, out = dx.  kBwdWeights: a = x, b = dy,
// out = dw.
ffi::Error Run(Part part, const Geometry& g, float* a, float* b, float* out) {
  const auto start = std::chrono::steady_clock::now();
  auto plan = GetPlan(part, g);
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
  if (part == kFwd) {
    plan->prim.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, prim_kernel},
                                {DNNL_ARG_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
  } else if (part == kBwdData) {
    plan->prim.execute(stream, {{DNNL_ARG_DIFF_SRC, src_m}, {DNNL_ARG_WEIGHTS, prim_kernel},
                                {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
  } else {
    plan->prim.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_DIFF_WEIGHTS, prim_kernel},
                                {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
    if (plan->reorder) plan->from_prim.execute(stream, prim_kernel, user_kernel);
  }
  stream.wait();
  stats.nanos[part] += std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::steady_clock::now() - start).count();
  stats.calls[part]++;
  return ffi::Error::Success();
}

Geometry MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                      ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                      int64_t pl, int64_t pr) {
  return {x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2], sh, sw, pt, pb, pl, pr};
}

using F32 = ffi::Buffer<ffi::F32>;

ffi::Error Fwd(F32 x, F32 w, ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt,
               int64_t pb, int64_t pl, int64_t pr) {
  const auto g = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(kFwd, g, x.typed_data(), w.typed_data(), y->typed_data());
}

ffi::Error BwdData(F32 dy, F32 w, ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw,
                   int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  const auto g = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(kBwdData, g, dy.typed_data(), w.typed_data(), dx->typed_data());
}

ffi::Error BwdWeights(F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw,
                      int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  const auto g = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(kBwdWeights, g, x.typed_data(), dy.typed_data(), dw->typed_data());
}

}  // namespace

#define ONEDNN_CONV_BINDING                                                                    \
  ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>().Attr<int64_t>("sh").Attr<int64_t>("sw")   \
      .Attr<int64_t>("pt").Attr<int64_t>("pb").Attr<int64_t>("pl").Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvFwd, Fwd, ONEDNN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdData, BwdData, ONEDNN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdWeights, BwdWeights, ONEDNN_CONV_BINDING);
