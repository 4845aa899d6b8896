/*
 * edge_thyroid_openvino: a Triton Inference Server backend that runs a bundle's backbone with OpenVINO's
 * C API inside the server process.
 *
 * Why a backend of our own: the embedded server (the nvidia-pytriton wheel) carries only Triton's Python
 * backend, whose every request crosses to a stub process and back and whose outputs are copied once
 * more on the way (~0.7 ms of the ~2 ms loopback overhead, BENCHMARKS.md: serving). Here a request's
 * pixels are read where Triton holds them (the client's shared memory region when it registered one),
 * the backbone runs on the server's own thread, and the maps are written straight into the response.
 *
 * The model folder is written by edge_thyroid.serving.repository (flavour "openvino"): model.onnx is the
 * backbone [N, 3, S, S] -> [N, C, h, w]; with the parameter edge_thyroid_host_mirror = "1" its input is
 * [2N, 3, S, S], the N panes then their mirror images, which this backend writes (graph.py
 * host_mirrored_input: OpenVINO then runs the INT8 stem in INT8). Scheduling is Triton's own: its dynamic
 * batcher hands several requests to one execute, whose panes run as one pass.
 *
 * The Triton API is declared here (opaque handles, the functions and constants used), not included: the
 * wheel ships no headers. The declarations follow the TRITONBACKEND API 1.x.
 */
#include <openvino/c/openvino.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the Triton server and backend API, as used here ---------------------------------------------- */
typedef struct TRITONSERVER_Error TRITONSERVER_Error;
typedef struct TRITONSERVER_Message TRITONSERVER_Message;
typedef struct TRITONBACKEND_Backend TRITONBACKEND_Backend;
typedef struct TRITONBACKEND_Model TRITONBACKEND_Model;
typedef struct TRITONBACKEND_ModelInstance TRITONBACKEND_ModelInstance;
typedef struct TRITONBACKEND_Request TRITONBACKEND_Request;
typedef struct TRITONBACKEND_Response TRITONBACKEND_Response;
typedef struct TRITONBACKEND_Input TRITONBACKEND_Input;
typedef struct TRITONBACKEND_Output TRITONBACKEND_Output;

enum { TRITON_ERROR_UNKNOWN = 0, TRITON_ERROR_INTERNAL = 1, TRITON_ERROR_NOT_FOUND = 2,
       TRITON_ERROR_INVALID_ARG = 3, TRITON_ERROR_UNAVAILABLE = 4, TRITON_ERROR_UNSUPPORTED = 5 };
enum { TRITON_TYPE_FP32 = 11 };
enum { TRITON_MEMORY_CPU = 0, TRITON_MEMORY_CPU_PINNED = 1 };
enum { TRITON_RESPONSE_COMPLETE_FINAL = 1, TRITON_REQUEST_RELEASE_ALL = 1 };
enum { TRITON_ARTIFACT_FILESYSTEM = 0 };
enum { TRITON_LOG_ERROR = 2 };
#define BACKEND_API_MAJOR 1u
#define BACKEND_API_MINOR 10u /* everything used here exists since 1.10 */

#define EXPORT __attribute__((visibility("default")))
#define IMPORT extern

IMPORT TRITONSERVER_Error* TRITONSERVER_ErrorNew(int code, const char* message);
IMPORT void TRITONSERVER_ErrorDelete(TRITONSERVER_Error* error);
IMPORT int TRITONSERVER_ErrorCode(TRITONSERVER_Error* error);
IMPORT const char* TRITONSERVER_ErrorMessage(TRITONSERVER_Error* error);
IMPORT TRITONSERVER_Error* TRITONSERVER_LogMessage(int level, const char* filename, int line, const char* message);
IMPORT TRITONSERVER_Error* TRITONSERVER_MessageSerializeToJson(TRITONSERVER_Message* message, const char** base,
                                                               size_t* byte_size);
IMPORT TRITONSERVER_Error* TRITONSERVER_MessageDelete(TRITONSERVER_Message* message);
IMPORT TRITONSERVER_Error* TRITONBACKEND_ApiVersion(uint32_t* major, uint32_t* minor);
IMPORT TRITONSERVER_Error* TRITONBACKEND_ModelRepository(TRITONBACKEND_Model* model, int* artifact_type,
                                                         const char** location);
IMPORT TRITONSERVER_Error* TRITONBACKEND_ModelVersion(TRITONBACKEND_Model* model, uint64_t* version);
IMPORT TRITONSERVER_Error* TRITONBACKEND_ModelConfig(TRITONBACKEND_Model* model, uint32_t config_version,
                                                     TRITONSERVER_Message** config);
IMPORT TRITONSERVER_Error* TRITONBACKEND_ModelSetState(TRITONBACKEND_Model* model, void* state);
IMPORT TRITONSERVER_Error* TRITONBACKEND_ModelState(TRITONBACKEND_Model* model, void** state);
IMPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceModel(TRITONBACKEND_ModelInstance* instance,
                                                            TRITONBACKEND_Model** model);
IMPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceSetState(TRITONBACKEND_ModelInstance* instance, void* state);
IMPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceState(TRITONBACKEND_ModelInstance* instance, void** state);
IMPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceReportStatistics(
    TRITONBACKEND_ModelInstance* instance, TRITONBACKEND_Request* request, bool success, uint64_t exec_start_ns,
    uint64_t compute_start_ns, uint64_t compute_end_ns, uint64_t exec_end_ns);
IMPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceReportBatchStatistics(
    TRITONBACKEND_ModelInstance* instance, uint64_t batch_size, uint64_t exec_start_ns, uint64_t compute_start_ns,
    uint64_t compute_end_ns, uint64_t exec_end_ns);
IMPORT TRITONSERVER_Error* TRITONBACKEND_RequestInput(TRITONBACKEND_Request* request, const char* name,
                                                      TRITONBACKEND_Input** input);
IMPORT TRITONSERVER_Error* TRITONBACKEND_RequestOutputCount(TRITONBACKEND_Request* request, uint32_t* count);
IMPORT TRITONSERVER_Error* TRITONBACKEND_RequestOutputName(TRITONBACKEND_Request* request, uint32_t index,
                                                           const char** name);
IMPORT TRITONSERVER_Error* TRITONBACKEND_RequestRelease(TRITONBACKEND_Request* request, uint32_t release_flags);
IMPORT TRITONSERVER_Error* TRITONBACKEND_InputProperties(TRITONBACKEND_Input* input, const char** name,
                                                         int* datatype, const int64_t** shape, uint32_t* dims_count,
                                                         uint64_t* byte_size, uint32_t* buffer_count);
IMPORT TRITONSERVER_Error* TRITONBACKEND_InputBuffer(TRITONBACKEND_Input* input, uint32_t index, const void** buffer,
                                                     uint64_t* buffer_byte_size, int* memory_type,
                                                     int64_t* memory_type_id);
IMPORT TRITONSERVER_Error* TRITONBACKEND_ResponseNew(TRITONBACKEND_Response** response, TRITONBACKEND_Request* request);
IMPORT TRITONSERVER_Error* TRITONBACKEND_ResponseOutput(TRITONBACKEND_Response* response, TRITONBACKEND_Output** output,
                                                        const char* name, int datatype, const int64_t* shape,
                                                        uint32_t dims_count);
IMPORT TRITONSERVER_Error* TRITONBACKEND_OutputBuffer(TRITONBACKEND_Output* output, void** buffer,
                                                      uint64_t buffer_byte_size, int* memory_type,
                                                      int64_t* memory_type_id);
IMPORT TRITONSERVER_Error* TRITONBACKEND_ResponseSend(TRITONBACKEND_Response* response, uint32_t send_flags,
                                                      TRITONSERVER_Error* error);
IMPORT TRITONSERVER_Error* TRITONBACKEND_ResponseDelete(TRITONBACKEND_Response* response);

/* ---- helpers ------------------------------------------------------------------------------------------ */
#define INPUT_NAME "pixels"
#define OUTPUT_NAME "feature_maps"
#define MAX_PANES 256

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static TRITONSERVER_Error* error_of(int code, const char* format, const char* detail) {
    char text[1024];
    snprintf(text, sizeof text, format, detail ? detail : "");
    return TRITONSERVER_ErrorNew(code, text);
}

static TRITONSERVER_Error* ov_error(ov_status_e status, const char* what) {
    char text[1024];
    const char* last = ov_get_last_err_msg(); /* a copy of ours to free */
    snprintf(text, sizeof text, "edge_thyroid_openvino: %s failed: %s (%s)", what, ov_get_error_info(status),
             last ? last : "");
    if (last) ov_free(last);
    return TRITONSERVER_ErrorNew(TRITON_ERROR_INTERNAL, text);
}

/* Errors of bookkeeping calls (statistics, release) change nothing for the client: dropped. */
static void ignore(TRITONSERVER_Error* error) {
    if (error) TRITONSERVER_ErrorDelete(error);
}

/* A new error with the same code and text, for each request a failed pass answers. */
static TRITONSERVER_Error* copy_error(TRITONSERVER_Error* error) {
    return TRITONSERVER_ErrorNew(TRITONSERVER_ErrorCode(error), TRITONSERVER_ErrorMessage(error));
}

static void log_error(TRITONSERVER_Error* error) {
    ignore(TRITONSERVER_LogMessage(TRITON_LOG_ERROR, __FILE__, __LINE__, TRITONSERVER_ErrorMessage(error)));
}

static const char* skip_space(const char* at) {
    while (*at == ' ' || *at == '\n' || *at == '\t' || *at == '\r') ++at;
    return at;
}

/* The JSON value after "<key>": (spaces allowed), or NULL. Triton serializes the config compactly;
 * the scanner does not rely on it. */
static const char* json_value(const char* json, const char* key) {
    char needle[256];
    snprintf(needle, sizeof needle, "\"%s\"", key);
    for (const char* at = strstr(json, needle); at; at = strstr(at + 1, needle)) {
        const char* after = skip_space(at + strlen(needle));
        if (*after == ':') return skip_space(after + 1);
    }
    return NULL;
}

/* A config parameter written by our repository writer: "<key>": {"string_value": "<integer>"}. */
static long config_parameter(const char* json, const char* key, long fallback) {
    const char* value = json_value(json, key);
    if (!value || *value != '{') return fallback;
    value = json_value(value, "string_value");
    return value && *value == '"' ? strtol(value + 1, NULL, 10) : fallback;
}

static long config_integer(const char* json, const char* key, long fallback) {
    const char* value = json_value(json, key);
    return value ? strtol(value, NULL, 10) : fallback;
}

/* ---- model: where the file is and how to run it -------------------------------------------------------- */
typedef struct {
    char model_path[4096];
    long image_size;
    long max_batch_size;
    long threads;     /* 0: OpenVINO's choice */
    long host_mirror; /* the graph takes N panes then their N mirror images */
    long precompile;  /* networks for 1..precompile panes compiled when an instance loads */
    long cpu_pinning; /* OpenVINO may pin its threads to cores (one instance only) */
} ModelState;

EXPORT TRITONSERVER_Error* TRITONBACKEND_Initialize(TRITONBACKEND_Backend* backend) {
    (void)backend;
    uint32_t major = 0, minor = 0;
    TRITONSERVER_Error* err = TRITONBACKEND_ApiVersion(&major, &minor);
    if (err) return err;
    if (major != BACKEND_API_MAJOR || minor < BACKEND_API_MINOR) {
        char version[64];
        snprintf(version, sizeof version, "%u.%u", major, minor);
        return error_of(TRITON_ERROR_UNSUPPORTED,
                        "edge_thyroid_openvino needs Triton backend API 1.10 or later (major 1); this server has %s",
                        version);
    }
    return NULL;
}

EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInitialize(TRITONBACKEND_Model* model) {
    const char* location = NULL;
    int artifact = 0;
    uint64_t version = 0;
    TRITONSERVER_Error* err = TRITONBACKEND_ModelRepository(model, &artifact, &location);
    if (!err) err = TRITONBACKEND_ModelVersion(model, &version);
    if (err) return err;
    if (artifact != TRITON_ARTIFACT_FILESYSTEM)
        return error_of(TRITON_ERROR_UNSUPPORTED, "edge_thyroid_openvino reads models from a file system%s", NULL);

    TRITONSERVER_Message* message = NULL;
    if ((err = TRITONBACKEND_ModelConfig(model, 1, &message))) return err;
    const char* json = NULL;
    size_t json_size = 0;
    if ((err = TRITONSERVER_MessageSerializeToJson(message, &json, &json_size))) {
        TRITONSERVER_MessageDelete(message);
        return err;
    }
    ModelState* state = calloc(1, sizeof *state);
    if (!state) {
        TRITONSERVER_MessageDelete(message);
        return error_of(TRITON_ERROR_INTERNAL, "edge_thyroid_openvino: out of memory%s", NULL);
    }
    snprintf(state->model_path, sizeof state->model_path, "%s/%llu/model.onnx", location, (unsigned long long)version);
    state->image_size = config_parameter(json, "edge_thyroid_image_size", 0);
    state->threads = config_parameter(json, "intra_op_threads", 0);
    state->host_mirror = config_parameter(json, "edge_thyroid_host_mirror", 0);
    state->precompile = config_parameter(json, "edge_thyroid_precompile_panes", 1);
    state->cpu_pinning = config_parameter(json, "edge_thyroid_cpu_pinning", 0);
    state->max_batch_size = config_integer(json, "max_batch_size", 0);
    TRITONSERVER_MessageDelete(message);
    if (state->image_size <= 0 || state->max_batch_size <= 0 || state->max_batch_size > MAX_PANES) {
        free(state);
        return error_of(TRITON_ERROR_INVALID_ARG,
                        "edge_thyroid_openvino: the config needs edge_thyroid_image_size > 0 and max_batch_size in "
                        "1..256 (write it with edge-thyroid export-triton --flavor openvino)%s", NULL);
    }
    if (state->precompile > state->max_batch_size) state->precompile = state->max_batch_size;
    FILE* probe = fopen(state->model_path, "rb");
    if (!probe) {
        err = error_of(TRITON_ERROR_NOT_FOUND, "edge_thyroid_openvino: no model file at %s", state->model_path);
        free(state);
        return err;
    }
    fclose(probe);
    if ((err = TRITONBACKEND_ModelSetState(model, state))) free(state);
    return err;
}

EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelFinalize(TRITONBACKEND_Model* model) {
    void* state = NULL;
    TRITONSERVER_Error* err = TRITONBACKEND_ModelState(model, &state);
    free(state);
    return err;
}

/* ---- instance: one OpenVINO core, a network compiled per pane count -------------------------------------- */
typedef struct {
    ov_compiled_model_t* compiled;
    ov_infer_request_t* request;
    ov_tensor_t* input_tensor; /* the request's own input tensor, held so `input` stays its data */
    float* input;              /* [panes (x2 with mirror), 3, S, S] */
    char failed[512];          /* a compile that failed is not retried on every batch: its message */
} Network;

typedef struct {
    ModelState* model;
    ov_core_t* core;
    Network networks[MAX_PANES + 1]; /* index: panes in the pass */
} InstanceState;

static void free_network(Network* network) {
    if (network->input_tensor) ov_tensor_free(network->input_tensor);
    if (network->request) ov_infer_request_free(network->request);
    if (network->compiled) ov_compiled_model_free(network->compiled);
    memset(network, 0, sizeof *network);
}

static TRITONSERVER_Error* compile_network(InstanceState* instance, long panes, Network* network);

static TRITONSERVER_Error* network_for(InstanceState* instance, long panes, Network** out) {
    Network* network = &instance->networks[panes];
    *out = network;
    if (network->request) return NULL;
    if (network->failed[0]) return TRITONSERVER_ErrorNew(TRITON_ERROR_INTERNAL, network->failed);
    TRITONSERVER_Error* err = compile_network(instance, panes, network);
    if (err) snprintf(network->failed, sizeof network->failed, "%s", TRITONSERVER_ErrorMessage(err));
    return err;
}

static TRITONSERVER_Error* compile_network(InstanceState* instance, long panes, Network* network) {
    ModelState* model = instance->model;
    ov_model_t* graph = NULL;
    ov_status_e status = ov_core_read_model(instance->core, model->model_path, NULL, &graph);
    if (status != OK) return ov_error(status, "reading model.onnx");
    int64_t dims[4] = {panes * (model->host_mirror ? 2 : 1), 3, model->image_size, model->image_size};
    ov_partial_shape_t shape;
    status = ov_partial_shape_create_static(4, dims, &shape);
    if (status == OK) {
        status = ov_model_reshape_single_input(graph, shape);
        ov_partial_shape_free(&shape);
    }
    if (status != OK) {
        ov_model_free(graph);
        return ov_error(status, "reshaping the backbone to a pass's pane count");
    }
    /* The numbers the accuracy gate approved: f32 for the float parts, as the in-process backend asks. */
    char threads[32];
    snprintf(threads, sizeof threads, "%ld", model->threads);
    /* Several instances share the cores: OpenVINO pinning each one's threads would stack them on the same
     * cores, so pinning is left to a lone instance (edge_thyroid_cpu_pinning, written by the repository). */
    ov_property_t properties[4] = {{ov_property_key_hint_performance_mode, "LATENCY"},
                                   {ov_property_key_hint_inference_precision, "f32"},
                                   {ov_property_key_hint_enable_cpu_pinning, model->cpu_pinning ? "YES" : "NO"},
                                   {ov_property_key_inference_num_threads, threads}};
    status = ov_core_compile_model_props(instance->core, graph, "CPU", model->threads > 0 ? 4 : 3, properties,
                                         &network->compiled);
    ov_model_free(graph);
    if (status != OK) return ov_error(status, "compiling the backbone");
    status = ov_compiled_model_create_infer_request(network->compiled, &network->request);
    if (status == OK) status = ov_infer_request_get_input_tensor_by_index(network->request, 0, &network->input_tensor);
    void* data = NULL;
    if (status == OK) status = ov_tensor_data(network->input_tensor, &data);
    if (status != OK) {
        free_network(network);
        return ov_error(status, "creating an inference request");
    }
    network->input = data;
    return NULL;
}

EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceInitialize(TRITONBACKEND_ModelInstance* handle) {
    TRITONBACKEND_Model* model = NULL;
    void* model_state = NULL;
    TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceModel(handle, &model);
    if (!err) err = TRITONBACKEND_ModelState(model, &model_state);
    if (err) return err;
    InstanceState* instance = calloc(1, sizeof *instance);
    if (!instance) return error_of(TRITON_ERROR_INTERNAL, "edge_thyroid_openvino: out of memory%s", NULL);
    instance->model = model_state;
    ov_status_e status = ov_core_create(&instance->core);
    if (status != OK) {
        free(instance);
        return ov_error(status, "creating the OpenVINO core");
    }
    /* Compile now what a stream asks for (1..precompile panes): no frame waits for the compiler. */
    for (long panes = 1; panes <= instance->model->precompile; ++panes) {
        Network* network = NULL;
        if ((err = network_for(instance, panes, &network))) {
            for (long i = 1; i <= MAX_PANES; ++i) free_network(&instance->networks[i]);
            ov_core_free(instance->core);
            free(instance);
            return err;
        }
    }
    if ((err = TRITONBACKEND_ModelInstanceSetState(handle, instance))) {
        for (long i = 1; i <= MAX_PANES; ++i) free_network(&instance->networks[i]);
        ov_core_free(instance->core);
        free(instance);
    }
    return err;
}

EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceFinalize(TRITONBACKEND_ModelInstance* handle) {
    void* state = NULL;
    TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceState(handle, &state);
    InstanceState* instance = state;
    if (instance) {
        for (long i = 1; i <= MAX_PANES; ++i) free_network(&instance->networks[i]);
        if (instance->core) ov_core_free(instance->core);
        free(instance);
    }
    return err;
}

/* ---- execute: the requests' panes as one pass ------------------------------------------------------------ */
static TRITONSERVER_Error* request_panes(TRITONBACKEND_Request* request, long image_size, long max_panes,
                                         TRITONBACKEND_Input** input, long* panes) {
    TRITONSERVER_Error* err = TRITONBACKEND_RequestInput(request, INPUT_NAME, input);
    if (err) return err;
    const int64_t* shape = NULL;
    uint32_t dims = 0;
    int datatype = 0;
    uint64_t byte_size = 0;
    if ((err = TRITONBACKEND_InputProperties(*input, NULL, &datatype, &shape, &dims, &byte_size, NULL))) return err;
    if (datatype != TRITON_TYPE_FP32 || dims != 4 || shape[1] != 3 || shape[2] != image_size ||
        shape[3] != image_size || shape[0] < 1 || shape[0] > max_panes ||
        byte_size != (uint64_t)shape[0] * 3 * image_size * image_size * sizeof(float)) {
        return error_of(TRITON_ERROR_INVALID_ARG,
                        "edge_thyroid_openvino: input 'pixels' must be FP32 [N, 3, S, S] with the model's S and "
                        "N x 3 x S x S x 4 bytes%s", NULL);
    }
    *panes = (long)shape[0];
    return NULL;
}

/* Copy a request's pixels (one or more buffers) to dst. */
static TRITONSERVER_Error* read_pixels(TRITONBACKEND_Input* input, char* dst, uint64_t expected) {
    uint32_t buffers = 0;
    TRITONSERVER_Error* err = TRITONBACKEND_InputProperties(input, NULL, NULL, NULL, NULL, NULL, &buffers);
    if (err) return err;
    uint64_t copied = 0;
    for (uint32_t i = 0; i < buffers; ++i) {
        const void* buffer = NULL;
        uint64_t size = 0;
        int memory_type = TRITON_MEMORY_CPU;
        int64_t memory_id = 0;
        if ((err = TRITONBACKEND_InputBuffer(input, i, &buffer, &size, &memory_type, &memory_id))) return err;
        if (memory_type != TRITON_MEMORY_CPU && memory_type != TRITON_MEMORY_CPU_PINNED)
            return error_of(TRITON_ERROR_UNSUPPORTED, "edge_thyroid_openvino: input in GPU memory%s", NULL);
        if (copied + size > expected) break;
        memcpy(dst + copied, buffer, size);
        copied += size;
    }
    if (copied != expected)
        return error_of(TRITON_ERROR_INVALID_ARG, "edge_thyroid_openvino: input 'pixels' holds fewer bytes than its "
                        "shape says%s", NULL);
    return NULL;
}

static bool wants_maps(TRITONBACKEND_Request* request) {
    uint32_t count = 0;
    if (TRITONBACKEND_RequestOutputCount(request, &count) || count == 0) return true;
    for (uint32_t i = 0; i < count; ++i) {
        const char* name = NULL;
        if (!TRITONBACKEND_RequestOutputName(request, i, &name) && name && strcmp(name, OUTPUT_NAME) == 0) return true;
    }
    return false;
}

static void answer_error(TRITONBACKEND_Request* request, TRITONSERVER_Error* error) {
    TRITONBACKEND_Response* response = NULL;
    TRITONSERVER_Error* err = TRITONBACKEND_ResponseNew(&response, request);
    /* Triton copies the error it sends: the caller still owns (and deletes) it. */
    if (!err) err = TRITONBACKEND_ResponseSend(response, TRITON_RESPONSE_COMPLETE_FINAL, error);
    if (err) TRITONSERVER_ErrorDelete(err);
    TRITONSERVER_ErrorDelete(error);
}

EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceExecute(TRITONBACKEND_ModelInstance* handle,
                                                              TRITONBACKEND_Request** requests, const uint32_t count) {
    uint64_t exec_start = now_ns();
    void* state = NULL;
    TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceState(handle, &state);
    if (err) return err;
    InstanceState* instance = state;
    ModelState* model = instance->model;
    /* Every request holds at least one pane and a pass at most max_batch_size (<= MAX_PANES) panes, so
     * Triton's batcher never sends more; an error returned here leaves the requests to Triton. */
    if (count > MAX_PANES)
        return error_of(TRITON_ERROR_INTERNAL, "edge_thyroid_openvino: more requests in one batch than panes%s", NULL);

    /* Which requests take part, and where each one's panes start in the pass. */
    TRITONBACKEND_Input* inputs[MAX_PANES];
    long first[MAX_PANES], panes[MAX_PANES];
    bool ok[MAX_PANES];
    long total = 0;
    for (uint32_t r = 0; r < count; ++r) {
        ok[r] = false;
        TRITONSERVER_Error* bad = request_panes(requests[r], model->image_size, model->max_batch_size, &inputs[r],
                                                &panes[r]);
        if (!bad && panes[r] > model->max_batch_size - total)
            bad = error_of(TRITON_ERROR_INVALID_ARG, "edge_thyroid_openvino: more panes than max_batch_size%s", NULL);
        if (bad) {
            answer_error(requests[r], bad);
            continue;
        }
        first[r] = total;
        total += panes[r];
        ok[r] = true;
    }

    TRITONSERVER_Error* failure = NULL; /* of the pass: every request in it is answered with it */
    Network* network = NULL;
    uint64_t compute_start = 0, compute_end = 0;
    const float* maps = NULL;
    int64_t map_dims[4] = {0, 0, 0, 0};
    size_t pane_floats = 0;
    ov_tensor_t* output = NULL;
    if (total > 0) failure = network_for(instance, total, &network);
    if (total > 0 && !failure) {
        const size_t pane_floats_in = (size_t)3 * model->image_size * model->image_size;
        const size_t pane_bytes = pane_floats_in * sizeof(float);
        for (uint32_t r = 0; r < count; ++r) {
            if (!ok[r]) continue;
            TRITONSERVER_Error* bad = read_pixels(inputs[r], (char*)(network->input + first[r] * pane_floats_in),
                                                  (uint64_t)panes[r] * pane_bytes);
            if (bad) { /* that request alone is refused; its panes' slots are run but not answered */
                answer_error(requests[r], bad);
                ok[r] = false;
            }
        }
        if (model->host_mirror) {
            /* panes total..2*total-1: the mirror images (width reversed) of panes 0..total-1 */
            const long side = model->image_size;
            for (long p = 0; p < total * 3; ++p) {
                const float* src = network->input + p * side * side;
                float* dst = network->input + (total * 3 + p) * side * side;
                for (long y = 0; y < side; ++y)
                    for (long x = 0; x < side; ++x) dst[y * side + x] = src[y * side + side - 1 - x];
            }
        }
        compute_start = now_ns();
        ov_status_e status = ov_infer_request_infer(network->request);
        compute_end = now_ns();
        if (status != OK) failure = ov_error(status, "the backbone pass");
        if (!failure) {
            ov_shape_t shape = {0, NULL};
            ov_element_type_e type = DYNAMIC;
            void* data = NULL;
            status = ov_infer_request_get_output_tensor_by_index(network->request, 0, &output);
            if (status == OK) status = ov_tensor_data(output, &data);
            if (status == OK) status = ov_tensor_get_element_type(output, &type);
            if (status == OK) status = ov_tensor_get_shape(output, &shape);
            if (status != OK) {
                failure = ov_error(status, "reading the feature maps");
            } else {
                bool expected = shape.rank == 4 && shape.dims[0] == total && type == F32;
                for (int i = 0; expected && i < 4; ++i) map_dims[i] = shape.dims[i];
                ov_shape_free(&shape);
                if (!expected)
                    failure = error_of(TRITON_ERROR_INTERNAL, "edge_thyroid_openvino: the backbone's output is not f32 "
                                       "[panes, C, h, w]%s", NULL);
                maps = data;
                pane_floats = (size_t)(map_dims[1] * map_dims[2] * map_dims[3]);
            }
        }
    }
    if (failure) log_error(failure);

    bool any = false;
    for (uint32_t r = 0; r < count; ++r) {
        if (!ok[r]) {
            ignore(TRITONBACKEND_ModelInstanceReportStatistics(handle, requests[r], false, 0, 0, 0, 0));
            ignore(TRITONBACKEND_RequestRelease(requests[r], TRITON_REQUEST_RELEASE_ALL));
            continue;
        }
        TRITONSERVER_Error* answer = failure ? copy_error(failure) : NULL;
        TRITONBACKEND_Response* response = NULL;
        err = TRITONBACKEND_ResponseNew(&response, requests[r]);
        if (!err && !answer && wants_maps(requests[r])) {
            int64_t dims[4] = {panes[r], map_dims[1], map_dims[2], map_dims[3]};
            TRITONBACKEND_Output* out = NULL;
            void* buffer = NULL;
            int memory_type = TRITON_MEMORY_CPU;
            int64_t memory_id = 0;
            uint64_t bytes = (uint64_t)panes[r] * pane_floats * sizeof(float);
            answer = TRITONBACKEND_ResponseOutput(response, &out, OUTPUT_NAME, TRITON_TYPE_FP32, dims, 4);
            if (!answer) answer = TRITONBACKEND_OutputBuffer(out, &buffer, bytes, &memory_type, &memory_id);
            if (!answer && memory_type != TRITON_MEMORY_CPU && memory_type != TRITON_MEMORY_CPU_PINNED)
                answer = TRITONSERVER_ErrorNew(TRITON_ERROR_UNSUPPORTED, "edge_thyroid_openvino: output in GPU memory");
            if (!answer) memcpy(buffer, maps + (size_t)first[r] * pane_floats, bytes);
        }
        bool answered = !answer;
        if (!err) {
            /* Send takes the response whatever it returns; Triton copies the error it sends. */
            ignore(TRITONBACKEND_ResponseSend(response, TRITON_RESPONSE_COMPLETE_FINAL, answer));
        } else {
            TRITONSERVER_ErrorDelete(err);
            answered = false;
        }
        ignore(answer);
        ignore(TRITONBACKEND_ModelInstanceReportStatistics(handle, requests[r], answered, exec_start, compute_start,
                                                           compute_end, now_ns()));
        ignore(TRITONBACKEND_RequestRelease(requests[r], TRITON_REQUEST_RELEASE_ALL));
        any = any || answered;
    }
    if (output) ov_tensor_free(output);
    if (any)
        ignore(TRITONBACKEND_ModelInstanceReportBatchStatistics(handle, (uint64_t)total, exec_start, compute_start,
                                                                compute_end, now_ns()));
    ignore(failure); /* each request got its own copy */
    return NULL;
}
