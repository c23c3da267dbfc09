// PyTorch binding: turns tensors into LinearAttnParams and runs the sweeps on the
// current stream. Argument checking for users lives in the Python package; the
// checks here only keep a direct call of the private module from crashing.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "lightning_attn.h"

namespace la2 = lightning_attn2;

namespace {

la2::DType element_type(const at::Tensor& t) {
    switch (t.scalar_type()) {
        case at::kHalf: return la2::DType::kFloat16;
        case at::kBFloat16: return la2::DType::kBFloat16;
        case at::kFloat: return la2::DType::kFloat32;
        default: TORCH_CHECK(false, "lightning_attn2_cuda: unsupported dtype ", t.scalar_type());
    }
}

void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& like) {
    TORCH_CHECK(t.is_cuda() && t.device() == like.device(), name, " must be on ", like.device());
    TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ", like.scalar_type());
    TORCH_CHECK(t.dim() == 4 && t.stride(3) == 1, name, " must be [B, H, N, dim] with a contiguous last dim");
    TORCH_CHECK(t.size(0) == like.size(0) && t.size(1) == like.size(1) && t.size(2) == like.size(2), name,
                " must share B, H and N with q");
    TORCH_CHECK(t.size(3) >= 1 && t.size(3) <= 256, name, " head dim must be in [1, 256]");
}

// A tensor as the sweep reads it; `reversed` walks each sequence from its last token.
la2::StridedTensor strided(const at::Tensor& t, bool reversed) {
    int64_t seq_stride = t.stride(2);
    char* ptr = static_cast<char*>(t.data_ptr());
    if (reversed) {
        ptr += (t.size(2) - 1) * seq_stride * t.element_size();
        seq_stride = -seq_stride;
    }
    return {ptr, t.stride(0), t.stride(1), seq_stride};
}

// o = scale * sum_{s <= t} lambda^(t-s) (q_t . k_s) v_s, in time order or reversed.
la2::LinearAttnParams sweep(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& o,
                            const c10::optional<at::Tensor>& slope, double scale, bool reversed) {
    la2::LinearAttnParams p{};
    p.q = strided(q, reversed);
    p.k = strided(k, reversed);
    p.v = strided(v, reversed);
    p.o = strided(o, reversed);
    p.slope = slope.has_value() ? slope->data_ptr<float>() : nullptr;
    p.scale = static_cast<float>(scale);
    p.batch = static_cast<int>(q.size(0));
    p.heads = static_cast<int>(q.size(1));
    p.seqlen = static_cast<int>(q.size(2));
    p.dim_qk = static_cast<int>(q.size(3));
    p.dim_v = static_cast<int>(v.size(3));
    return p;
}

void check_slope(const c10::optional<at::Tensor>& slope, const at::Tensor& q) {
    if (!slope.has_value()) return;
    TORCH_CHECK(slope->is_cuda() && slope->device() == q.device() && slope->scalar_type() == at::kFloat &&
                    slope->is_contiguous() && slope->numel() == q.size(1),
                "slope must be a contiguous float32 tensor of H elements on q's device");
}

void run(const la2::LinearAttnParams* problems, int num_problems, const at::Tensor& like) {
    const la2::DType dtype = element_type(like);
    const size_t workspace_bytes = la2::linear_attn_workspace_bytes(problems, num_problems, dtype);
    const at::Tensor workspace = at::empty({static_cast<int64_t>(workspace_bytes)}, like.options().dtype(at::kByte));
    const cudaError_t err = la2::run_linear_attn(problems, num_problems, dtype, workspace.data_ptr(),
                                                 c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "lightning_attn2_cuda: kernel launch failed: ", cudaGetErrorString(err));
}

// Writes o (preallocated by the caller, like every output here).
void forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& slope,
             double scale, at::Tensor& o) {
    check_tensor(q, "q", q);
    check_tensor(k, "k", q);
    check_tensor(v, "v", q);
    check_tensor(o, "o", q);
    TORCH_CHECK(k.size(3) == q.size(3) && o.size(3) == v.size(3), "head dims of q/k and v/o must agree");
    check_slope(slope, q);
    if (q.numel() == 0 || v.numel() == 0) return;
    const c10::cuda::CUDAGuard guard(q.device());
    const la2::LinearAttnParams problem = sweep(q, k, v, o, slope, scale, /*reversed=*/false);
    run(&problem, 1, q);
}

// Algorithm 2 as three sweeps of one launch (see linear_attn_kernel.cuh):
//   dq_t = scale * sum_{s <= t} lambda^(t-s) (do_t . v_s) k_s   forward in time,
//   dk_s = scale * sum_{t >= s} lambda^(t-s) (v_s . do_t) q_t   backward in time,
//   dv_s = scale * sum_{t >= s} lambda^(t-s) (k_s . q_t) do_t   backward in time.
void backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& dout,
              const c10::optional<at::Tensor>& slope, double scale, at::Tensor& dq, at::Tensor& dk,
              at::Tensor& dv) {
    check_tensor(q, "q", q);
    check_tensor(k, "k", q);
    check_tensor(v, "v", q);
    check_tensor(dout, "dout", q);
    check_tensor(dq, "dq", q);
    check_tensor(dk, "dk", q);
    check_tensor(dv, "dv", q);
    TORCH_CHECK(k.size(3) == q.size(3) && dq.size(3) == q.size(3) && dk.size(3) == q.size(3) &&
                    dout.size(3) == v.size(3) && dv.size(3) == v.size(3),
                "head dims of q/k/dq/dk and v/dout/dv must agree");
    check_slope(slope, q);
    if (q.numel() == 0 || v.numel() == 0) return;
    const c10::cuda::CUDAGuard guard(q.device());
    const la2::LinearAttnParams problems[3] = {
        sweep(dout, v, k, dq, slope, scale, /*reversed=*/false),
        sweep(v, dout, q, dk, slope, scale, /*reversed=*/true),
        sweep(k, q, dout, dv, slope, scale, /*reversed=*/true),
    };
    run(problems, 3, q);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "Lightning Attention-2 CUDA kernels (use lightning_attn2_cuda.lightning_attn)";
    m.def("forward", &forward, "o = lightning attention of q, k, v (o preallocated)", py::arg("q"), py::arg("k"),
          py::arg("v"), py::arg("slope"), py::arg("scale"), py::arg("o"));
    m.def("backward", &backward, "dq, dk, dv of lightning attention (preallocated)", py::arg("q"), py::arg("k"),
          py::arg("v"), py::arg("dout"), py::arg("slope"), py::arg("scale"), py::arg("dq"), py::arg("dk"),
          py::arg("dv"));
}
