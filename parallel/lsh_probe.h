// RecordingDispatcher: a Dispatcher that runs another one and keeps what the last forward saw —
// the routing, the layer's input rows x[T, h] and where the layer's output went — so that tests
// and benchmarks can take the MoE inputs of a trained model (docs/lsh.md#accuracy-on-trained-
// hidden-states) and re-run one layer on them with another dispatcher. Everything is forwarded
// unchanged: a layer with a recorder computes exactly what it computes with the inner
// dispatcher.
//
// output() is the pointer combine() wrote the layer's output to, and output_copy() that output
// as combine() left it. In the transformer the block then adds its residual stream into the
// same buffer (out += resid), so after the model's forward, output() − output_copy() is the
// residual stream the layer's output was added to.
#pragma once

#include <memory>
#include <vector>

#include "parallel/moe_dispatcher.h"

namespace grove::parallel {

class RecordingDispatcher final : public Dispatcher {
 public:
  RecordingDispatcher(std::unique_ptr<Dispatcher> inner, int h) : inner_(std::move(inner)), h_(h) {}
  const char* name() const override { return inner_->name(); }

  void preprocess(const Routing& routing, const float* x) override {
    routing_ = routing;
    x_.assign(x, x + int64_t(routing.T) * h_);
    inner_->preprocess(routing, x);
  }
  ExpertBatch dispatch(const float* x) override { return inner_->dispatch(x); }
  void combine(float* out, const float* y) override {
    inner_->combine(out, y);
    out_ = out;
    out_copy_.assign(out, out + int64_t(routing_.T) * h_);
  }
  void combine_backward(float* dy, float* dweight, const float* dout) override {
    inner_->combine_backward(dy, dweight, dout);
  }
  void dispatch_backward(float* din, const float* dx) override {
    inner_->dispatch_backward(din, dx);
  }
  size_t stash_bytes() const override { return inner_->stash_bytes(); }

  Dispatcher& inner() { return *inner_; }
  const Routing& routing() const { return routing_; }
  const std::vector<float>& input() const { return x_; }               // [T, h]
  const float* output() const { return out_; }                         // [T, h], the layer's buffer
  const std::vector<float>& output_copy() const { return out_copy_; }  // [T, h] at combine

 private:
  std::unique_ptr<Dispatcher> inner_;
  int h_;
  Routing routing_;
  std::vector<float> x_, out_copy_;
  const float* out_ = nullptr;
};

}  // namespace grove::parallel
