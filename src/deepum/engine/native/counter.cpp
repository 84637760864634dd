// A CPU allocator that counts: the cpu tier's way to know, without
// intercepting operators, how many bytes tensors hold (see engine/memwatch.py).
//
// It wraps the allocator torch had installed and forwards every request to
// it. Once installed it stays for the life of the process: some callers
// (ideep) free a raw block through whatever allocator is installed at the
// time of the free, so a block made by one allocator and freed by another
// must be recognised. This one keeps the set of its blocks and hands a
// pointer it did not make to the wrapped allocator. Plain C API, no
// pybind11, so that it builds in seconds.
#include <Python.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <new>
#include <unordered_set>

#include <c10/core/CPUAllocator.h>

namespace {

std::atomic<int64_t> g_current{0};
std::atomic<int64_t> g_peak{0};
c10::Allocator* g_base = nullptr;

// Each counted block is the wrapped allocator's block with a header in
// front: the data starts kHeader bytes in (the alignment torch asks for is
// kept), and the header remembers the size and the wrapped block's own
// context and deleter. The data pointer is its own context, as raw
// allocations (Allocator::raw_allocate) require.
constexpr size_t kHeader = 64;

struct Header {
  void* context;
  c10::DeleterFnPtr deleter;
  int64_t nbytes;
};

std::mutex g_mutex;
std::unordered_set<void*> g_blocks;  // data pointers this allocator made and not yet freed

void release(void* data) {
  {
    std::lock_guard<std::mutex> guard(g_mutex);
    if (g_blocks.erase(data) == 0) {
      // Made before this allocator was installed, freed through it (raw_deallocate).
      c10::DeleterFnPtr base = g_base->raw_deleter();
      if (base != nullptr) {
        base(data);
      }
      return;
    }
  }
  auto* header = reinterpret_cast<Header*>(static_cast<char*>(data) - kHeader);
  const Header h = *header;
  g_current.fetch_sub(h.nbytes, std::memory_order_relaxed);
  if (h.deleter != nullptr) {
    h.deleter(h.context);
  }
}

struct CountingAllocator final : public c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    if (n == 0) {
      return g_base->allocate(0);
    }
    c10::DataPtr inner = g_base->allocate(n + kHeader);
    const auto nbytes = static_cast<int64_t>(n);
    const int64_t now = g_current.fetch_add(nbytes, std::memory_order_relaxed) + nbytes;
    int64_t peak = g_peak.load(std::memory_order_relaxed);
    while (now > peak && !g_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
    char* base = static_cast<char*>(inner.get());
    c10::Device device = inner.device();
    c10::DeleterFnPtr deleter = inner.get_deleter();
    void* context = inner.release_context();
    new (base) Header{context, deleter, nbytes};
    void* data = base + kHeader;
    {
      std::lock_guard<std::mutex> guard(g_mutex);
      g_blocks.insert(data);
    }
    return c10::DataPtr(data, data, &release, device);
  }

  c10::DeleterFnPtr raw_deleter() const override {
    return &release;
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

CountingAllocator g_counting;

PyObject* install(PyObject*, PyObject*) {
  if (g_base == nullptr) {
    g_base = c10::GetCPUAllocator();
    c10::SetCPUAllocator(&g_counting, /*priority=*/0);
  }
  Py_RETURN_NONE;
}

PyObject* installed(PyObject*, PyObject*) {
  return PyBool_FromLong(c10::GetCPUAllocator() == &g_counting);
}

PyObject* current(PyObject*, PyObject*) {
  return PyLong_FromLongLong(g_current.load(std::memory_order_relaxed));
}

PyObject* peak(PyObject*, PyObject*) {
  return PyLong_FromLongLong(g_peak.load(std::memory_order_relaxed));
}

PyObject* reset_peak(PyObject*, PyObject*) {
  g_peak.store(g_current.load(std::memory_order_relaxed), std::memory_order_relaxed);
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"install", install, METH_NOARGS, "Count every CPU allocation from now on."},
    {"installed", installed, METH_NOARGS, "Whether the counting allocator is torch's CPU allocator."},
    {"current", current, METH_NOARGS, "Bytes of counted blocks alive now."},
    {"peak", peak, METH_NOARGS, "Most bytes alive at once since the last reset."},
    {"reset_peak", reset_peak, METH_NOARGS, "Start a new peak from the current count."},
    {nullptr, nullptr, 0, nullptr},
};

#define DEEPUM_STR_(x) #x
#define DEEPUM_STR(x) DEEPUM_STR_(x)
#define DEEPUM_CONCAT_(a, b) a##b
#define DEEPUM_CONCAT(a, b) DEEPUM_CONCAT_(a, b)

PyModuleDef module = {PyModuleDef_HEAD_INIT, DEEPUM_STR(TORCH_EXTENSION_NAME), nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC DEEPUM_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  return PyModule_Create(&module);
}
