// Hands one storage's memory to another without a copy, for torch builds
// whose UntypedStorage has no _swap_data_ptr_ (engine/movers.py: swap_data).
// The storages come as byte tensors over them: pybind11 converts tensors.
#include <torch/extension.h>

namespace {

void swap_data(const at::Tensor& a, const at::Tensor& b) {
  c10::StorageImpl* x = a.storage().unsafeGetStorageImpl();
  c10::StorageImpl* y = b.storage().unsafeGetStorageImpl();
  TORCH_CHECK(x->device() == y->device(), "storages on different devices");
  size_t nx = x->nbytes();
  size_t ny = y->nbytes();
  at::DataPtr dx = x->set_data_ptr(at::DataPtr(nullptr, x->device()));
  at::DataPtr dy = y->set_data_ptr(std::move(dx));
  x->set_data_ptr(std::move(dy));
  x->set_nbytes(ny);
  y->set_nbytes(nx);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("swap_data", &swap_data, "Swap the memory (and sizes) of two tensors' storages.");
}
