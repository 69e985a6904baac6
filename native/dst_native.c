// dst's one native addon (Node-API, plain C): what Node's fs does not offer for sparse files. SEEK_DATA/SEEK_HOLE
// (which runs of a file hold data) and fallocate PUNCH_HOLE / ZERO_RANGE (free a range, or zero it without writing).
// Every call runs on the libuv thread pool (napi_async_work): lseek and fallocate touch filesystem metadata and may
// block on the disk, so none of them runs on the event loop. Loaded by node/devices/native.ts, which falls back to
// "capability absent" when this file was not built.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
#include <node_api.h>
#ifdef __linux__
#include <linux/falloc.h>
#endif

enum { OP_EXTENTS = 1, OP_PUNCH = 2, OP_ZERO = 3 };

typedef struct {
  napi_async_work work;
  napi_ref callback;
  int op;
  int fd;
  int64_t offset;
  int64_t length;
  uint32_t max_runs;
  uint32_t runs;
  int64_t *run; // 3 per run: offset, length, hole (1) or data (0)
  int err;
} request_t;

static void add_run (request_t *r, int64_t offset, int64_t length, int hole) {
  if (length <= 0) return;
  if (r->runs > 0 && r->run[3 * (r->runs - 1) + 2] == hole) { r->run[3 * (r->runs - 1) + 1] += length; return; }
  r->run[3 * r->runs] = offset;
  r->run[3 * r->runs + 1] = length;
  r->run[3 * r->runs + 2] = hole;
  r->runs++;
}

// Runs of [offset, offset + length), at most max_runs; they end early (short of the range) when the cap is reached.
static void do_extents (request_t *r) {
#if defined(SEEK_DATA) && defined(SEEK_HOLE)
  int64_t pos = r->offset;
  int64_t end = r->offset + r->length;
  while (pos < end && r->runs + 2 <= r->max_runs) {
    off_t data = lseek(r->fd, (off_t)pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) { add_run(r, pos, end - pos, 1); return; } // no data from pos to the file's end
      r->err = errno;
      return;
    }
    if (data >= end) { add_run(r, pos, end - pos, 1); return; }
    add_run(r, pos, data - pos, 1);
    off_t hole = lseek(r->fd, data, SEEK_HOLE);
    if (hole < 0) { r->err = errno; return; }
    if (hole > end) hole = (off_t)end;
    add_run(r, data, hole - data, 0);
    pos = hole;
  }
#else
  r->err = ENOTSUP;
#endif
}

static void execute (napi_env env, void *data) {
  (void)env;
  request_t *r = data;
  switch (r->op) {
    case OP_EXTENTS: do_extents(r); break;
#if defined(__linux__) && defined(FALLOC_FL_PUNCH_HOLE)
    case OP_PUNCH:
      if (fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)r->offset, (off_t)r->length) != 0) r->err = errno;
      break;
    case OP_ZERO:
      if (fallocate(r->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)r->offset, (off_t)r->length) != 0) r->err = errno;
      break;
#endif
    default: r->err = ENOTSUP;
  }
}

// callback(errno, runs): errno 0 on success; runs a Float64Array of (offset, length, hole) triples for OP_EXTENTS.
static void complete (napi_env env, napi_status status, void *data) {
  request_t *r = data;
  napi_value cb, global, argv[2];
  napi_get_reference_value(env, r->callback, &cb);
  napi_get_global(env, &global);
  napi_create_int32(env, status == napi_ok ? r->err : EIO, &argv[0]);
  if (r->op == OP_EXTENTS && r->err == 0 && status == napi_ok) {
    napi_value ab;
    void *out;
    napi_create_arraybuffer(env, (size_t)r->runs * 3 * sizeof(double), &out, &ab);
    for (uint32_t i = 0; i < r->runs * 3; i++) ((double *)out)[i] = (double)r->run[i];
    napi_create_typedarray(env, napi_float64_array, (size_t)r->runs * 3, ab, 0, &argv[1]);
  } else {
    napi_get_undefined(env, &argv[1]);
  }
  napi_call_function(env, global, cb, 2, argv, NULL);
  napi_delete_reference(env, r->callback);
  napi_delete_async_work(env, r->work);
  free(r->run);
  free(r);
}

// op(fd, offset, length, [maxRuns,] callback)
static napi_value start (napi_env env, napi_callback_info info, int op) {
  size_t argc = 5;
  napi_value argv[5], name;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  size_t want = op == OP_EXTENTS ? 5 : 4;
  if (argc < want) { napi_throw_type_error(env, NULL, "dst_native: too few arguments"); return NULL; }
  request_t *r = calloc(1, sizeof *r);
  if (r == NULL) { napi_throw_error(env, NULL, "dst_native: out of memory"); return NULL; }
  r->op = op;
  double offset, length;
  if (napi_get_value_int32(env, argv[0], &r->fd) != napi_ok || napi_get_value_double(env, argv[1], &offset) != napi_ok ||
      napi_get_value_double(env, argv[2], &length) != napi_ok || offset < 0 || length < 0) {
    free(r);
    napi_throw_type_error(env, NULL, "dst_native: fd, offset and length must be non-negative numbers");
    return NULL;
  }
  r->offset = (int64_t)offset;
  r->length = (int64_t)length;
  if (op == OP_EXTENTS) {
    if (napi_get_value_uint32(env, argv[3], &r->max_runs) != napi_ok || r->max_runs < 2 || r->max_runs > 1u << 20) {
      free(r);
      napi_throw_range_error(env, NULL, "dst_native: maxRuns must be between 2 and 2^20");
      return NULL;
    }
    r->run = malloc((size_t)r->max_runs * 3 * sizeof(int64_t));
    if (r->run == NULL) { free(r); napi_throw_error(env, NULL, "dst_native: out of memory"); return NULL; }
  }
  napi_create_reference(env, argv[want - 1], 1, &r->callback);
  napi_create_string_utf8(env, "dst_native", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, execute, complete, r, &r->work);
  napi_queue_async_work(env, r->work);
  return NULL;
}

static napi_value extents (napi_env env, napi_callback_info info) { return start(env, info, OP_EXTENTS); }
static napi_value punch_hole (napi_env env, napi_callback_info info) { return start(env, info, OP_PUNCH); }
static napi_value zero_range (napi_env env, napi_callback_info info) { return start(env, info, OP_ZERO); }

static napi_value init (napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "extents", NULL, extents, NULL, NULL, NULL, napi_default, NULL },
    { "punchHole", NULL, punch_hole, NULL, NULL, NULL, napi_default, NULL },
    { "zeroRange", NULL, zero_range, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
