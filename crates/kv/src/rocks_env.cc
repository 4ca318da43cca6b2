// RocksDB's FileSystem over BlueFS. Every call goes to Rust through the narrow C API declared
// below (implemented in crates/kv/src/rocks_env.rs); this file only adapts RocksDB's classes and
// turns status codes into IOStatus. Built by build.rs with the flags librocksdb-sys builds
// RocksDB with (C++20, NDEBUG, the POSIX platform defines), against the headers it ships.

#include <algorithm>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "rocksdb/env.h"
#include "rocksdb/file_system.h"
#include "rocksdb/io_status.h"

extern "C" {

// Mirrors bluepoll's `FfiStatus`: a code and a NUL-terminated message.
struct bp_status {
  int32_t code;
  char msg[244];
};

enum : int32_t {
  BP_OK = 0,
  BP_NOT_FOUND = 1,
  BP_NO_SPACE = 2,
  BP_CORRUPTION = 3,
  BP_IO_ERROR = 4,
  BP_INVALID_ARGUMENT = 5,
  BP_NOT_SUPPORTED = 6,
  BP_BUSY = 7,
};

enum : int32_t { BP_OPEN_CREATE = 0, BP_OPEN_APPEND = 1, BP_OPEN_REUSE = 2 };

void bp_fs_release(void* fs);
int32_t bp_fs_exists(void* fs, const char* path, size_t len, bp_status* st);
int32_t bp_fs_children(void* fs, const char* dir, size_t len,
                       void (*add)(void* ctx, const char* name, size_t len),
                       void* ctx, bp_status* st);
int32_t bp_fs_delete(void* fs, const char* path, size_t len, bp_status* st);
int32_t bp_fs_mkdir(void* fs, const char* dir, size_t len, int32_t if_missing,
                    bp_status* st);
int32_t bp_fs_rmdir(void* fs, const char* dir, size_t len, bp_status* st);
int32_t bp_fs_is_dir(void* fs, const char* path, size_t len, int32_t* is_dir,
                     bp_status* st);
int32_t bp_fs_stat(void* fs, const char* path, size_t len, uint64_t* size,
                   uint64_t* mtime_ns, bp_status* st);
int32_t bp_fs_rename(void* fs, const char* from, size_t from_len,
                     const char* to, size_t to_len, bp_status* st);
int32_t bp_fs_link(void* fs, const char* from, size_t from_len, const char* to,
                   size_t to_len, bp_status* st);
int32_t bp_fs_truncate(void* fs, const char* path, size_t len, uint64_t size,
                       bp_status* st);
int32_t bp_fs_lock(void* fs, const char* path, size_t len, bp_status* st);
int32_t bp_fs_unlock(void* fs, const char* path, size_t len, bp_status* st);
int32_t bp_fs_free_space(void* fs, uint64_t* free_bytes, bp_status* st);

void* bp_writer_open(void* fs, const char* path, size_t len, int32_t mode,
                     const char* old_path, size_t old_len, bp_status* st);
int32_t bp_writer_append(void* w, const char* data, size_t len, bp_status* st);
int32_t bp_writer_fsync(void* w, bp_status* st);
int32_t bp_writer_truncate(void* w, uint64_t size, bp_status* st);
uint64_t bp_writer_size(void* w);
int32_t bp_writer_close(void* w, bp_status* st);

void* bp_reader_open(void* fs, const char* path, size_t len, bp_status* st);
int32_t bp_reader_read_at(void* r, uint64_t offset, char* buf, size_t len,
                          size_t* got, bp_status* st);
void bp_reader_free(void* r);

}  // extern "C"

// The C API's handle for an Env (db/c.cc defines it; the rocksdb crate's `Env::from_raw`
// takes one and frees it with rocksdb_env_destroy, which deletes `rep` unless `is_default`).
struct rocksdb_env_t {
  rocksdb::Env* rep;
  bool is_default;
};

namespace {

using rocksdb::FileOptions;
using rocksdb::IODebugContext;
using rocksdb::IOOptions;
using rocksdb::IOStatus;
using rocksdb::Slice;

IOStatus to_io_status(const bp_status& st) {
  const char* m = st.msg;
  switch (st.code) {
    case BP_OK:
      return IOStatus::OK();
    case BP_NOT_FOUND:
      return IOStatus::NotFound(m);
    case BP_NO_SPACE: {
      IOStatus s = IOStatus::NoSpace(m);
      s.SetRetryable(false);
      return s;
    }
    case BP_CORRUPTION:
      return IOStatus::Corruption(m);
    case BP_INVALID_ARGUMENT:
      return IOStatus::InvalidArgument(m);
    case BP_NOT_SUPPORTED:
      return IOStatus::NotSupported(m);
    case BP_BUSY:
      return IOStatus::Busy(m);
    default:
      return IOStatus::IOError(m);
  }
}

bp_status fresh_status() {
  bp_status st;
  st.code = BP_OK;
  st.msg[0] = '\0';
  return st;
}

// Runs one C API call, `f(&status)`, and returns its outcome as an IOStatus.
template <typename F>
IOStatus call(F f) {
  bp_status st = fresh_status();
  f(&st);
  return to_io_status(st);
}

// Up to `n` bytes at `offset` of a reader handle, into `scratch`.
IOStatus read_at(void* reader, uint64_t offset, size_t n, Slice* result,
                 char* scratch) {
  size_t got = 0;
  IOStatus s = call([&](bp_status* st) {
    bp_reader_read_at(reader, offset, scratch, n, &got, st);
  });
  *result = s.ok() ? Slice(scratch, got) : Slice();
  return s;
}

class BlueSequentialFile : public rocksdb::FSSequentialFile {
 public:
  explicit BlueSequentialFile(void* reader) : reader_(reader) {}
  ~BlueSequentialFile() override { bp_reader_free(reader_); }

  IOStatus Read(size_t n, const IOOptions&, Slice* result, char* scratch,
                IODebugContext*) override {
    IOStatus s = read_at(reader_, position_, n, result, scratch);
    position_ += result->size();
    return s;
  }

  IOStatus PositionedRead(uint64_t offset, size_t n, const IOOptions&,
                          Slice* result, char* scratch,
                          IODebugContext*) override {
    return read_at(reader_, offset, n, result, scratch);
  }

  IOStatus Skip(uint64_t n) override {
    position_ += n;
    return IOStatus::OK();
  }

 private:
  void* reader_;
  uint64_t position_ = 0;
};

class BlueRandomAccessFile : public rocksdb::FSRandomAccessFile {
 public:
  explicit BlueRandomAccessFile(void* reader) : reader_(reader) {}
  ~BlueRandomAccessFile() override { bp_reader_free(reader_); }

  IOStatus Read(uint64_t offset, size_t n, const IOOptions&, Slice* result,
                char* scratch, IODebugContext*) const override {
    return read_at(reader_, offset, n, result, scratch);
  }

 private:
  void* reader_;
};

class BlueWritableFile : public rocksdb::FSWritableFile {
 public:
  explicit BlueWritableFile(void* writer) : writer_(writer) {}
  ~BlueWritableFile() override { BlueWritableFile::Close(IOOptions(), nullptr); }

  IOStatus Append(const Slice& data, const IOOptions&,
                  IODebugContext*) override {
    return Open([&](bp_status* st) {
      bp_writer_append(writer_, data.data(), data.size(), st);
    });
  }

  IOStatus Append(const Slice& data, const IOOptions& options,
                  const rocksdb::DataVerificationInfo&,
                  IODebugContext* dbg) override {
    return Append(data, options, dbg);
  }

  IOStatus Truncate(uint64_t size, const IOOptions&,
                    IODebugContext*) override {
    return Open([&](bp_status* st) { bp_writer_truncate(writer_, size, st); });
  }

  IOStatus Close(const IOOptions&, IODebugContext*) override {
    if (writer_ == nullptr) {
      return IOStatus::OK();
    }
    void* writer = writer_;
    writer_ = nullptr;
    return call([&](bp_status* st) { bp_writer_close(writer, st); });
  }

  // BlueFS buffers appends itself and writes them at fsync (or once a buffer fills), so an
  // fsync of a small append can travel in one log record; pushing them out here would cost
  // a device write per RocksDB record.
  IOStatus Flush(const IOOptions&, IODebugContext*) override {
    return IOStatus::OK();
  }

  IOStatus Sync(const IOOptions&, IODebugContext*) override {
    return Open([&](bp_status* st) { bp_writer_fsync(writer_, st); });
  }

  IOStatus Fsync(const IOOptions& options, IODebugContext* dbg) override {
    return Sync(options, dbg);
  }

  uint64_t GetFileSize(const IOOptions&, IODebugContext*) override {
    return writer_ == nullptr ? 0 : bp_writer_size(writer_);
  }

 private:
  // `call` on a writer that must still be open.
  template <typename F>
  IOStatus Open(F f) {
    if (writer_ == nullptr) {
      return IOStatus::IOError("BlueFS file already closed");
    }
    return call(f);
  }

  void* writer_;
};

// BlueFS commits directory changes before a call returns: there is nothing to sync.
class BlueDirectory : public rocksdb::FSDirectory {
 public:
  IOStatus Fsync(const IOOptions&, IODebugContext*) override {
    return IOStatus::OK();
  }
  IOStatus Close(const IOOptions&, IODebugContext*) override {
    return IOStatus::OK();
  }
};

class BlueFileLock : public rocksdb::FileLock {
 public:
  explicit BlueFileLock(std::string path) : path_(std::move(path)) {}
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// RocksDB's info LOG as a BlueFS file: lines are appended (not synced; the log is for people).
class BlueLogger : public rocksdb::Logger {
 public:
  explicit BlueLogger(void* writer) : writer_(writer) {}
  ~BlueLogger() override { CloseLocked(); }

  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    char line[1024];
    std::timespec now{};
    std::timespec_get(&now, TIME_UTC);
    std::tm utc{};
    gmtime_r(&now.tv_sec, &utc);
    int n = std::snprintf(line, sizeof(line), "%04d/%02d/%02d-%02d:%02d:%02d.%06ld ",
                          utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday,
                          utc.tm_hour, utc.tm_min, utc.tm_sec, now.tv_nsec / 1000);
    if (n < 0) {
      return;
    }
    size_t used = static_cast<size_t>(n);
    va_list copy;
    va_copy(copy, ap);
    int m = std::vsnprintf(line + used, sizeof(line) - used, format, copy);
    va_end(copy);
    if (m < 0) {
      return;
    }
    used = std::min(sizeof(line) - 2, used + static_cast<size_t>(m));
    if (used == 0 || line[used - 1] != '\n') {
      line[used++] = '\n';
    }
    std::lock_guard<std::mutex> guard(mutex_);
    if (writer_ != nullptr) {
      bp_status st = fresh_status();
      bp_writer_append(writer_, line, used, &st);
    }
  }

 protected:
  rocksdb::Status CloseImpl() override {
    CloseLocked();
    return rocksdb::Status::OK();
  }

 private:
  void CloseLocked() {
    std::lock_guard<std::mutex> guard(mutex_);
    if (writer_ != nullptr) {
      bp_status st = fresh_status();
      bp_writer_close(writer_, &st);
      writer_ = nullptr;
    }
  }

  std::mutex mutex_;
  void* writer_;
};

// The names bp_fs_children hands back. The callback runs inside a Rust frame, so no C++
// exception may leave it: a failed allocation is recorded and reported after the call.
struct ChildList {
  std::vector<std::string>* names;
  bool out_of_memory = false;
};

void add_child(void* ctx, const char* name, size_t len) noexcept {
  auto* list = static_cast<ChildList*>(ctx);
  try {
    list->names->emplace_back(name, len);
  } catch (...) {
    list->out_of_memory = true;
  }
}

class BlueFileSystem : public rocksdb::FileSystem {
 public:
  explicit BlueFileSystem(void* fs) : fs_(fs) {}
  ~BlueFileSystem() override { bp_fs_release(fs_); }

  const char* Name() const override { return "BlueFS"; }

  IOStatus NewSequentialFile(const std::string& fname, const FileOptions&,
                             std::unique_ptr<rocksdb::FSSequentialFile>* result,
                             IODebugContext*) override {
    void* r = nullptr;
    IOStatus s = call([&](bp_status* st) {
      r = bp_reader_open(fs_, fname.data(), fname.size(), st);
    });
    if (r != nullptr) {
      result->reset(new BlueSequentialFile(r));
    }
    return s;
  }

  IOStatus NewRandomAccessFile(
      const std::string& fname, const FileOptions&,
      std::unique_ptr<rocksdb::FSRandomAccessFile>* result,
      IODebugContext*) override {
    void* r = nullptr;
    IOStatus s = call([&](bp_status* st) {
      r = bp_reader_open(fs_, fname.data(), fname.size(), st);
    });
    if (r != nullptr) {
      result->reset(new BlueRandomAccessFile(r));
    }
    return s;
  }

  IOStatus NewWritableFile(const std::string& fname, const FileOptions&,
                           std::unique_ptr<rocksdb::FSWritableFile>* result,
                           IODebugContext*) override {
    return OpenWriter(fname, BP_OPEN_CREATE, std::string(), result);
  }

  IOStatus ReopenWritableFile(const std::string& fname, const FileOptions&,
                              std::unique_ptr<rocksdb::FSWritableFile>* result,
                              IODebugContext*) override {
    return OpenWriter(fname, BP_OPEN_APPEND, std::string(), result);
  }

  IOStatus ReuseWritableFile(const std::string& fname,
                             const std::string& old_fname, const FileOptions&,
                             std::unique_ptr<rocksdb::FSWritableFile>* result,
                             IODebugContext*) override {
    return OpenWriter(fname, BP_OPEN_REUSE, old_fname, result);
  }

  IOStatus NewDirectory(const std::string&, const IOOptions&,
                        std::unique_ptr<rocksdb::FSDirectory>* result,
                        IODebugContext*) override {
    result->reset(new BlueDirectory());
    return IOStatus::OK();
  }

  IOStatus FileExists(const std::string& fname, const IOOptions&,
                      IODebugContext*) override {
    return call([&](bp_status* st) {
      bp_fs_exists(fs_, fname.data(), fname.size(), st);
    });
  }

  IOStatus GetChildren(const std::string& dir, const IOOptions&,
                       std::vector<std::string>* result,
                       IODebugContext*) override {
    result->clear();
    ChildList list{result};
    IOStatus s = call([&](bp_status* st) {
      bp_fs_children(fs_, dir.data(), dir.size(), add_child, &list, st);
    });
    if (s.ok() && list.out_of_memory) {
      return IOStatus::IOError("listing " + dir + ": out of memory");
    }
    return s;
  }

  IOStatus DeleteFile(const std::string& fname, const IOOptions&,
                      IODebugContext*) override {
    return call([&](bp_status* st) {
      bp_fs_delete(fs_, fname.data(), fname.size(), st);
    });
  }

  IOStatus Truncate(const std::string& fname, size_t size, const IOOptions&,
                    IODebugContext*) override {
    return call([&](bp_status* st) {
      bp_fs_truncate(fs_, fname.data(), fname.size(), size, st);
    });
  }

  IOStatus CreateDir(const std::string& dirname, const IOOptions&,
                     IODebugContext*) override {
    return call([&](bp_status* st) {
      bp_fs_mkdir(fs_, dirname.data(), dirname.size(), 0, st);
    });
  }

  IOStatus CreateDirIfMissing(const std::string& dirname, const IOOptions&,
                              IODebugContext*) override {
    return call([&](bp_status* st) {
      bp_fs_mkdir(fs_, dirname.data(), dirname.size(), 1, st);
    });
  }

  IOStatus DeleteDir(const std::string& dirname, const IOOptions&,
                     IODebugContext*) override {
    return call([&](bp_status* st) {
      bp_fs_rmdir(fs_, dirname.data(), dirname.size(), st);
    });
  }

  IOStatus GetFileSize(const std::string& fname, const IOOptions&,
                       uint64_t* file_size, IODebugContext*) override {
    uint64_t mtime_ns = 0;
    return call([&](bp_status* st) {
      bp_fs_stat(fs_, fname.data(), fname.size(), file_size, &mtime_ns, st);
    });
  }

  IOStatus GetFileModificationTime(const std::string& fname, const IOOptions&,
                                   uint64_t* file_mtime,
                                   IODebugContext*) override {
    uint64_t size = 0;
    uint64_t mtime_ns = 0;
    IOStatus s = call([&](bp_status* st) {
      bp_fs_stat(fs_, fname.data(), fname.size(), &size, &mtime_ns, st);
    });
    *file_mtime = mtime_ns / 1000000000;
    return s;
  }

  IOStatus RenameFile(const std::string& src, const std::string& target,
                      const IOOptions&, IODebugContext*) override {
    return call([&](bp_status* st) {
      bp_fs_rename(fs_, src.data(), src.size(), target.data(), target.size(),
                 st);
    });
  }

  IOStatus LinkFile(const std::string& src, const std::string& target,
                    const IOOptions&, IODebugContext*) override {
    return call([&](bp_status* st) {
      bp_fs_link(fs_, src.data(), src.size(), target.data(), target.size(), st);
    });
  }

  IOStatus LockFile(const std::string& fname, const IOOptions&,
                    rocksdb::FileLock** lock, IODebugContext*) override {
    IOStatus s = call([&](bp_status* st) {
      bp_fs_lock(fs_, fname.data(), fname.size(), st);
    });
    *lock = s.ok() ? new BlueFileLock(fname) : nullptr;
    return s;
  }

  IOStatus UnlockFile(rocksdb::FileLock* lock, const IOOptions&,
                      IODebugContext*) override {
    std::unique_ptr<BlueFileLock> held(static_cast<BlueFileLock*>(lock));
    return call([&](bp_status* st) {
      bp_fs_unlock(fs_, held->path().data(), held->path().size(), st);
    });
  }

  IOStatus GetTestDirectory(const IOOptions&, std::string* path,
                            IODebugContext*) override {
    *path = "test";
    return IOStatus::OK();
  }

  IOStatus NewLogger(const std::string& fname, const IOOptions&,
                     std::shared_ptr<rocksdb::Logger>* result,
                     IODebugContext*) override {
    void* w = nullptr;
    IOStatus s = OpenWriterHandle(fname, BP_OPEN_CREATE, std::string(), &w);
    if (w != nullptr) {
      *result = std::make_shared<BlueLogger>(w);
    } else {
      result->reset();
    }
    return s;
  }

  IOStatus GetAbsolutePath(const std::string& db_path, const IOOptions&,
                           std::string* output_path,
                           IODebugContext*) override {
    *output_path = db_path;
    return IOStatus::OK();
  }

  IOStatus IsDirectory(const std::string& path, const IOOptions&, bool* is_dir,
                       IODebugContext*) override {
    int32_t dir = 0;
    IOStatus s = call([&](bp_status* st) {
      bp_fs_is_dir(fs_, path.data(), path.size(), &dir, st);
    });
    *is_dir = dir != 0;
    return s;
  }

  IOStatus GetFreeSpace(const std::string&, const IOOptions&,
                        uint64_t* diskfree, IODebugContext*) override {
    return call([&](bp_status* st) {
      bp_fs_free_space(fs_, diskfree, st);
    });
  }

 private:
  // A writer handle (null on failure) in `*w`.
  IOStatus OpenWriterHandle(const std::string& fname, int32_t mode,
                            const std::string& old_fname, void** w) {
    return call([&](bp_status* st) {
      *w = bp_writer_open(fs_, fname.data(), fname.size(), mode,
                          old_fname.data(), old_fname.size(), st);
    });
  }

  IOStatus OpenWriter(const std::string& fname, int32_t mode,
                      const std::string& old_fname,
                      std::unique_ptr<rocksdb::FSWritableFile>* result) {
    void* w = nullptr;
    IOStatus s = OpenWriterHandle(fname, mode, old_fname, &w);
    if (w != nullptr) {
      result->reset(new BlueWritableFile(w));
    }
    return s;
  }

  void* fs_;
};

}  // namespace

extern "C" {

// A RocksDB Env whose files live in BlueFS (threads, clock and the rest are the default
// Env's). Takes over `fs`: it is released (bp_fs_release) with the Env. Returns null on
// failure, after releasing `fs`.
rocksdb_env_t* bp_rocksdb_env_new(void* fs) {
  std::shared_ptr<rocksdb::FileSystem> file_system;
  try {
    file_system = std::make_shared<BlueFileSystem>(fs);
  } catch (...) {
    bp_fs_release(fs);
    return nullptr;
  }
  // From here on `file_system` owns `fs` and releases it if anything fails.
  try {
    std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(file_system);
    auto* handle = new rocksdb_env_t;
    handle->rep = env.release();
    handle->is_default = false;
    return handle;
  } catch (...) {
    return nullptr;
  }
}

}  // extern "C"
