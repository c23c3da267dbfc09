// PyTorch binding: turns tensors into LinearAttnParams and runs the sweeps on the
// current stream. Argument checking for users lives in the Python package; the
// checks here only keep a direct call of the private module with wrong shapes,
// dtypes or devices from crashing (the int32 size limits are checked in Python only).
// Nothing here reads device memory, so every call can be captured in a CUDA graph.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "lightning_attn.h"

namespace la2 = lightning_attn2;
using OptionalTensor = c10::optional<at::Tensor>;

namespace {

// Tests set this so that scratch the kernels forget to write before reading is NaN
// (every byte 0xff), as they poison the outputs they allocate.
bool poison_workspace = false;

la2::DType element_type(const at::Tensor& t) {
    switch (t.scalar_type()) {
        case at::kHalf: return la2::DType::kFloat16;
        case at::kBFloat16: return la2::DType::kBFloat16;
        case at::kFloat: return la2::DType::kFloat32;
        default: TORCH_CHECK(false, "lightning_attn2_cuda: unsupported dtype ", t.scalar_type());
    }
}

void check_on_device(const at::Tensor& t, const char* name, const at::Tensor& like) {
    TORCH_CHECK(t.is_cuda() && t.device() == like.device(), name, " must be on ", like.device());
}

void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& like) {
    check_on_device(t, name, like);
    TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ", like.scalar_type());
    TORCH_CHECK(t.dim() == 4 && t.stride(3) == 1, name, " must be [B, H, N, dim] with a contiguous last dim");
    TORCH_CHECK(t.size(0) == like.size(0) && t.size(1) == like.size(1) && t.size(2) == like.size(2), name,
                " must share B, H and N with q");
    TORCH_CHECK(t.size(3) >= 1 && t.size(3) <= 256, name, " head dim must be in [1, 256]");
}

void check_slope(const OptionalTensor& slope, const at::Tensor& q, int64_t heads) {
    if (!slope.has_value()) return;
    check_on_device(*slope, "slope", q);
    TORCH_CHECK(slope->scalar_type() == at::kFloat && slope->is_contiguous() && slope->numel() == heads,
                "slope must be a contiguous float32 tensor of H elements");
}

int64_t num_sequences(const at::Tensor& q, const OptionalTensor& cu_seqlens) {
    if (!cu_seqlens.has_value()) return q.size(0);
    check_on_device(*cu_seqlens, "cu_seqlens", q);
    TORCH_CHECK(q.size(0) == 1, "packed sequences (cu_seqlens) need batch 1");
    TORCH_CHECK((cu_seqlens->scalar_type() == at::kInt || cu_seqlens->scalar_type() == at::kLong) &&
                    cu_seqlens->dim() == 1 && cu_seqlens->size(0) >= 2 && cu_seqlens->is_contiguous(),
                "cu_seqlens must be a contiguous int32 or int64 tensor of N + 1 >= 2 entries");
    return cu_seqlens->size(0) - 1;
}

// A [num_seqs, H, rows, cols] float32 state; `transposed` reads it as [.., cols, rows].
la2::StateTensor state_tensor(const OptionalTensor& s, const char* name, const at::Tensor& q, int64_t num_seqs,
                              int64_t rows, int64_t cols, bool transposed) {
    if (!s.has_value()) return {};
    check_on_device(*s, name, q);
    TORCH_CHECK(s->scalar_type() == at::kFloat, name, " must be float32");
    const int64_t expected_rows = transposed ? cols : rows, expected_cols = transposed ? rows : cols;
    TORCH_CHECK(s->dim() == 4 && s->size(0) == num_seqs && s->size(1) == q.size(1) && s->size(2) == expected_rows &&
                    s->size(3) == expected_cols,
                name, " must be [", num_seqs, ", ", q.size(1), ", ", expected_rows, ", ", expected_cols, "]");
    la2::StateTensor out{s->data_ptr<float>(), s->stride(0), s->stride(1), s->stride(2), s->stride(3)};
    if (transposed) std::swap(out.row_stride, out.col_stride);
    return out;
}

la2::StridedTensor strided(const at::Tensor& t) { return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)}; }

// One sweep: o_t = scale q_t S_t, S_t = lambda S_{t-1} + kv_scale k_t^T v_t over each
// sequence, in time order or reversed.
la2::LinearAttnParams sweep(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& o,
                            const OptionalTensor& slope, double scale, double kv_scale, bool reversed,
                            const OptionalTensor& cu_seqlens, int64_t max_seqlen) {
    la2::LinearAttnParams p{};
    p.q = strided(q);
    p.k = strided(k);
    p.v = strided(v);
    p.o = strided(o);
    p.slope = slope.has_value() ? slope->data_ptr<float>() : nullptr;
    p.scale = static_cast<float>(scale);
    p.kv_scale = static_cast<float>(kv_scale);
    p.batch = static_cast<int>(q.size(0));
    p.heads = static_cast<int>(q.size(1));
    p.seqlen = static_cast<int>(q.size(2));
    p.dim_qk = static_cast<int>(q.size(3));
    p.dim_v = static_cast<int>(v.size(3));
    p.reversed = reversed;
    p.num_seqs = static_cast<int>(num_sequences(q, cu_seqlens));
    if (cu_seqlens.has_value()) {
        p.cu_seqlens = cu_seqlens->data_ptr();
        p.cu_seqlens_int64 = cu_seqlens->scalar_type() == at::kLong;
    }
    p.max_seqlen = cu_seqlens.has_value() && max_seqlen >= 0 ? static_cast<int>(std::min(max_seqlen, q.size(2))) : -1;
    return p;
}

void run(const la2::LinearAttnParams* problems, int num_problems, const at::Tensor& like) {
    const la2::DType dtype = element_type(like);
    const size_t workspace_bytes = la2::linear_attn_workspace_bytes(problems, num_problems, dtype);
    const at::Tensor workspace = at::empty({static_cast<int64_t>(workspace_bytes)}, like.options().dtype(at::kByte));
    if (poison_workspace) workspace.fill_(0xff);
    const cudaError_t err = la2::run_linear_attn(problems, num_problems, dtype, workspace.data_ptr(),
                                                 c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "lightning_attn2_cuda: kernel launch failed: ", cudaGetErrorString(err));
}

// Writes o, and final_state when given (outputs are preallocated by the caller).
void forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptionalTensor& slope,
             double scale, at::Tensor& o, const OptionalTensor& initial_state, const OptionalTensor& final_state,
             const OptionalTensor& cu_seqlens, int64_t max_seqlen) {
    check_tensor(q, "q", q);
    check_tensor(k, "k", q);
    check_tensor(v, "v", q);
    check_tensor(o, "o", q);
    TORCH_CHECK(k.size(3) == q.size(3) && o.size(3) == v.size(3), "head dims of q/k and v/o must agree");
    check_slope(slope, q, q.size(1));
    const c10::cuda::CUDAGuard guard(q.device());
    la2::LinearAttnParams problem = sweep(q, k, v, o, slope, scale, 1.0, /*reversed=*/false, cu_seqlens, max_seqlen);
    const int64_t seqs = problem.num_seqs, dim_qk = q.size(3), dim_v = v.size(3);
    problem.initial_state = state_tensor(initial_state, "initial_state", q, seqs, dim_qk, dim_v, false);
    problem.final_state = state_tensor(final_state, "final_state", q, seqs, dim_qk, dim_v, false);
    if (q.size(1) == 0 || seqs == 0) return;
    run(&problem, 1, q);
}

// Algorithm 2 as up to three sweeps of one launch (a fourth, of its own, for the
// slope gradient), for the gradients asked for (a missing output skips its sweep). With S_{-1} the initial state and dF the
// gradient flowing into the final state, per sequence:
//   dq_t = scale do_t S_t^T: sweep(do, v, k), forward in time, state S^T starting at S_{-1}^T;
//   G_s = dL/dS_s = scale sum_{t >= s} lambda^(t-s) q_t^T do_t + lambda^(last-s) dF;
//   dk_s = G_s v_s^T: sweep(v, do, q), backward in time, state G^T starting undecayed at dF^T;
//   dv_s = k_s G_s:   sweep(k, q, do), backward in time, state G starting undecayed at dF.
// The dv sweep's final state is G_0 (dL/dS_{-1} = lambda G_0, formed by the caller).
// For the slope gradient, the dq sweep differentiated in -slope (decay_derivative):
//   dq'_t = scale sum_s (t-s) lambda^(t-s) (do_t . v_s) k_s + scale (t+1) lambda^(t+1) do_t S_{-1}^T,
// with final state W^T, W = -dF/dslope, both times derivative_scale[h] (see
// LinearAttnParams); then dL/dslope = -(sum_t q_t . dq'_t + <dF, W>) / derivative_scale
// (formed by the caller). Every term keeps its own weight t - s: nothing cancels.
void backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& dout,
              const OptionalTensor& slope, double scale, const OptionalTensor& dq, const OptionalTensor& dk,
              const OptionalTensor& dv, const OptionalTensor& initial_state, const OptionalTensor& d_final_state,
              const OptionalTensor& g0, const OptionalTensor& dq_decay, const OptionalTensor& final_decay,
              const OptionalTensor& derivative_scale, const OptionalTensor& cu_seqlens, int64_t max_seqlen) {
    check_tensor(q, "q", q);
    check_tensor(k, "k", q);
    check_tensor(v, "v", q);
    check_tensor(dout, "dout", q);
    TORCH_CHECK(k.size(3) == q.size(3) && dout.size(3) == v.size(3), "head dims of q/k and v/dout must agree");
    check_slope(slope, q, q.size(1));
    TORCH_CHECK(!g0.has_value() || dv.has_value(), "g0 comes from the dv sweep: pass dv");
    TORCH_CHECK(!final_decay.has_value() || dq_decay.has_value(), "final_decay comes from the dq_decay sweep");
    const c10::cuda::CUDAGuard guard(q.device());
    const int64_t seqs = num_sequences(q, cu_seqlens), dim_qk = q.size(3), dim_v = v.size(3);
    la2::LinearAttnParams problems[la2::kMaxProblems];
    int num_problems = 0;
    // Checks a preallocated gradient of the given head dim and adds the sweep that writes it.
    auto add_sweep = [&](const at::Tensor& out, const char* name, int64_t head_dim, const at::Tensor& a,
                         const at::Tensor& b, const at::Tensor& c, double out_scale, double kv_scale,
                         bool reversed) -> la2::LinearAttnParams& {
        check_tensor(out, name, q);
        TORCH_CHECK(out.size(3) == head_dim, name, " must have head dim ", head_dim, ", got ", out.size(3));
        la2::LinearAttnParams& p = problems[num_problems++];
        p = sweep(a, b, c, out, slope, out_scale, kv_scale, reversed, cu_seqlens, max_seqlen);
        return p;
    };
    if (dq.has_value()) {
        la2::LinearAttnParams& p = add_sweep(*dq, "dq", dim_qk, dout, v, k, scale, 1.0, /*reversed=*/false);
        p.initial_state = state_tensor(initial_state, "initial_state", q, seqs, dim_v, dim_qk, true);
    }
    if (dk.has_value()) {
        la2::LinearAttnParams& p = add_sweep(*dk, "dk", dim_qk, v, dout, q, 1.0, scale, /*reversed=*/true);
        p.initial_state = state_tensor(d_final_state, "d_final_state", q, seqs, dim_v, dim_qk, true);
        p.initial_state_undecayed = true;
    }
    if (dv.has_value()) {
        la2::LinearAttnParams& p = add_sweep(*dv, "dv", dim_v, k, q, dout, 1.0, scale, /*reversed=*/true);
        p.initial_state = state_tensor(d_final_state, "d_final_state", q, seqs, dim_qk, dim_v, false);
        p.initial_state_undecayed = true;
        p.final_state = state_tensor(g0, "g0", q, seqs, dim_qk, dim_v, false);
    }
    if (dq_decay.has_value()) {
        TORCH_CHECK(derivative_scale.has_value(), "dq_decay needs derivative_scale");
        check_slope(derivative_scale, q, q.size(1));
        la2::LinearAttnParams& p =
            add_sweep(*dq_decay, "dq_decay", dim_qk, dout, v, k, scale, 1.0, /*reversed=*/false);
        p.initial_state = state_tensor(initial_state, "initial_state", q, seqs, dim_v, dim_qk, true);
        p.decay_derivative = true;
        p.derivative_scale = derivative_scale->data_ptr<float>();
        p.final_state = state_tensor(final_decay, "final_decay", q, seqs, dim_v, dim_qk, true);
    }
    if (num_problems == 0 || q.size(1) == 0 || seqs == 0) return;
    run(problems, num_problems, q);
}

// One decode step (see DecodeParams): updates state_cache in place, writes o.
void decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptionalTensor& slope,
            double scale, at::Tensor& state_cache, const OptionalTensor& state_indices, at::Tensor& o) {
    for (const auto& [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}, {&o, "o"}}) {
        check_on_device(*t, name, q);
        TORCH_CHECK(t->scalar_type() == q.scalar_type(), name, " must have q's dtype");
        TORCH_CHECK(t->dim() == 3 && t->stride(2) == 1 && t->size(0) == q.size(0) && t->size(1) == q.size(1),
                    name, " must be [B, H, dim] with q's B, H and a contiguous last dim");
        TORCH_CHECK(t->size(2) >= 1 && t->size(2) <= 256, name, " head dim must be in [1, 256]");
    }
    TORCH_CHECK(k.size(2) == q.size(2) && o.size(2) == v.size(2), "head dims of q/k and v/o must agree");
    check_slope(slope, q, q.size(1));
    check_on_device(state_cache, "state_cache", q);
    TORCH_CHECK(state_cache.scalar_type() == at::kFloat && state_cache.dim() == 4 &&
                    state_cache.size(1) == q.size(1) && state_cache.size(2) == q.size(2) &&
                    state_cache.size(3) == v.size(2) && state_cache.stride(3) == 1,
                "state_cache must be float32 [S, H, D, E] with a contiguous last dim");
    la2::DecodeParams p{};
    p.q = q.data_ptr();
    p.k = k.data_ptr();
    p.v = v.data_ptr();
    p.o = o.data_ptr();
    for (int i = 0; i < 2; ++i) {
        p.q_strides[i] = q.stride(i);
        p.k_strides[i] = k.stride(i);
        p.v_strides[i] = v.stride(i);
        p.o_strides[i] = o.stride(i);
    }
    p.state_cache = {state_cache.data_ptr<float>(), state_cache.stride(0), state_cache.stride(1),
                     state_cache.stride(2), 1};
    if (state_indices.has_value()) {
        check_on_device(*state_indices, "state_indices", q);
        TORCH_CHECK((state_indices->scalar_type() == at::kInt || state_indices->scalar_type() == at::kLong) &&
                        state_indices->dim() == 1 && state_indices->size(0) == q.size(0) &&
                        state_indices->is_contiguous(),
                    "state_indices must be a contiguous int32 or int64 tensor of B entries");
        p.state_indices = state_indices->data_ptr();
        p.state_indices_int64 = state_indices->scalar_type() == at::kLong;
    } else {
        TORCH_CHECK(state_cache.size(0) >= q.size(0), "state_cache needs a row per sequence");
    }
    p.cache_rows = static_cast<int>(state_cache.size(0));
    p.slope = slope.has_value() ? slope->data_ptr<float>() : nullptr;
    p.scale = static_cast<float>(scale);
    p.batch = static_cast<int>(q.size(0));
    p.heads = static_cast<int>(q.size(1));
    p.dim_qk = static_cast<int>(q.size(2));
    p.dim_v = static_cast<int>(v.size(2));
    const c10::cuda::CUDAGuard guard(q.device());
    const cudaError_t err = la2::run_linear_attn_decode(p, element_type(q), c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "lightning_attn2_cuda: decode launch failed: ", cudaGetErrorString(err));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "Lightning Attention-2 CUDA kernels (use lightning_attn2_cuda.lightning_attn)";
    m.def("forward", &forward, "o (and final_state) of lightning attention, preallocated", py::arg("q"),
          py::arg("k"), py::arg("v"), py::arg("slope"), py::arg("scale"), py::arg("o"), py::arg("initial_state"),
          py::arg("final_state"), py::arg("cu_seqlens"), py::arg("max_seqlen"));
    m.def("backward", &backward, "dq, dk, dv (and G_0, the slope derivative) of lightning attention, preallocated",
          py::arg("q"), py::arg("k"), py::arg("v"), py::arg("dout"), py::arg("slope"), py::arg("scale"), py::arg("dq"),
          py::arg("dk"), py::arg("dv"), py::arg("initial_state"), py::arg("d_final_state"), py::arg("g0"),
          py::arg("dq_decay"), py::arg("final_decay"), py::arg("derivative_scale"), py::arg("cu_seqlens"),
          py::arg("max_seqlen"));
    m.def("_set_poison_workspace", [](bool on) { poison_workspace = on; }, "tests: fill scratch with NaN");
    m.def("_set_relay_segment_cap", &la2::set_relay_segment_cap, "tests: cut chunks between CTAs (0: off)");
    m.def("decode", &decode, "one decode step: o, and state_cache updated in place", py::arg("q"), py::arg("k"),
          py::arg("v"), py::arg("slope"), py::arg("scale"), py::arg("state_cache"), py::arg("state_indices"),
          py::arg("o"));
}
