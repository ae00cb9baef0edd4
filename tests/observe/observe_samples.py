"""Test samples written from each project's source (docs/observe.md names the files and commits)."""

# vLLM V1 SpecDecodingLogging.log, 2025-06 and later: 3 positions, 100 steps (80, 50, 20 accepted per position).
VLLM_V1 = (
    "INFO 06-10 12:00:00 [metrics.py:96] SpecDecoding metrics: Mean acceptance length: 2.50, "
    "Accepted throughput: 15.00 tokens/s, Drafted throughput: 30.00 tokens/s, Accepted: 150 tokens, "
    "Drafted: 300 tokens, Per-position acceptance rate: 0.800, 0.500, 0.200, Avg Draft acceptance rate: 50.0%"
)
# the 2025-04 variant: the rate first, then the mean and the per-position rates
VLLM_V1_APRIL = (
    "INFO 04-28 09:00:00 [metrics.py:80] SpecDecoding metrics: Draft acceptance rate: 35.0%, "
    "Mean acceptance length: 2.05, Accepted: 105 tokens, Drafted: 300 tokens, "
    "Per-position acceptance rate: 0.600, 0.300, 0.150"
)
# the first V1 line (2025-03): counts only
VLLM_V1_FIRST = (
    "INFO 03-20 10:00:00 [metrics.py:50] SpecDecoding metrics: Draft acceptance rate: 40.0%, "
    "Accepted: 40 tokens, Drafted: 100 tokens"
)
# V0 (vllm/engine/metrics.py): k = 4, 100 steps, 150 of ours accepted, 250 emitted; V0's own "accepted" is 280
VLLM_V0 = (
    "INFO 08-06 02:02:02 metrics.py:467] Speculative metrics: Draft acceptance rate: 0.700, System efficiency: 0.500, "
    "Number of speculative tokens: 4, Number of accepted tokens: 280, Number of draft tokens: 400, "
    "Number of emitted tokens: 250."
)
VLLM_PROMETHEUS = """# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 40.0
vllm:spec_decode_num_drafts_total{engine="1",model_name="m"} 10.0
# HELP vllm:spec_decode_num_draft_tokens_total Number of draft tokens.
# TYPE vllm:spec_decode_num_draft_tokens_total counter
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 120.0
vllm:spec_decode_num_draft_tokens_total{engine="1",model_name="m"} 30.0
# HELP vllm:spec_decode_num_accepted_tokens_total Number of accepted tokens.
# TYPE vllm:spec_decode_num_accepted_tokens_total counter
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 60.0
vllm:spec_decode_num_accepted_tokens_total{engine="1",model_name="m"} 3.0
# HELP vllm:spec_decode_num_accepted_tokens_per_pos_total Accepted tokens per draft position.
# TYPE vllm:spec_decode_num_accepted_tokens_per_pos_total counter
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="0"} 30.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 20.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="2"} 10.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="0"} 3.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="1"} 0.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="2"} 0.0
"""
# per-request metrics.speculative_decoding, detailed: 4 steps, accepted [0, 1, 3, 0] of 3 each
VLLM_RESPONSE = {
    "id": "cmpl-1",
    "model": "m",
    "choices": [{"index": 0, "text": "hi", "finish_reason": "length"}],
    "metrics": {
        "speculative_decoding": {
            "mean_acceptance_length": 2.0,
            "draft_acceptance_rate": 4 / 12,
            "acceptance_histogram": {"0": 2, "1": 1, "3": 1},
            "num_spec_steps": 4,
            "num_accepted_draft_tokens": 4,
            "num_draft_tokens": 12,
            "num_spec_tokens": 3,
            "per_step_accepted": [0, 1, 3, 0],
            "per_step_drafted": [3, 3, 3, 3],
        }
    },
}
# SGLang meta_info, current names with the deprecated aliases and the by-position counts: 20 steps, k = 3
SGLANG_META = {
    "text": "x",
    "meta_info": {
        "id": "r1",
        "completion_tokens": 51,
        "spec_verify_ct": 20,
        "spec_num_correct_drafts": 30,
        "spec_num_proposed_drafts": 60,
        "spec_accepted_drafts": 30,
        "spec_proposed_drafts": 60,
        "spec_accept_rate": 0.5,
        "spec_accept_length": 2.55,
        "spec_correct_drafts_histogram": [8, 0, 6, 6],
        "spec_accept_histogram": [8, 0, 6, 6],
        "spec_num_correct_drafts_by_position": [12, 12, 6],
    },
}
# an older release: spec_accept_token_num / spec_draft_token_num
SGLANG_OLD = {
    "meta_info": {
        "completion_tokens": 31,
        "spec_verify_ct": 10,
        "spec_accept_token_num": 20,
        "spec_draft_token_num": 40,
        "spec_accept_rate": 0.5,
        "spec_accept_length": 3.1,
    }
}
# the oldest meta_info: steps and the length only (the prefill's token counted)
SGLANG_OLDEST = {"meta_info": {"completion_tokens": 31, "spec_verify_ct": 10}}
SGLANG_DECODE = (
    "[2025-06-10 12:00:00 TP0] Decode batch. #running-req: 1, #token: 300, token usage: 0.01, "
    "accept len: 3.21, accept rate: 0.55, cuda graph: True, gen throughput (token/s): 120.00, #queue-req: 0, "
)
SGLANG_PROMETHEUS = """# HELP sglang:spec_accept_length The average acceptance length of speculative decoding.
# TYPE sglang:spec_accept_length gauge
sglang:spec_accept_length{model_name="m"} 2.75
# HELP sglang:spec_accept_rate The average acceptance rate of speculative decoding.
# TYPE sglang:spec_accept_rate gauge
sglang:spec_accept_rate{model_name="m"} 0.58
"""
SGLANG_SERVER_INFO = {"internal_states": [{"avg_spec_accept_length": 2.4}], "version": "0.5"}
# llama.cpp print_timing, old and new, and common/speculative.cpp's statistics
LLAMA_OLD = "slot print_timing: id  0 | task 7 | draft acceptance rate = 0.50000 (   20 accepted /    40 generated)"
LLAMA_NEW = (
    "slot print_timing: id  0 | task 9 | draft acceptance = 0.62008 ( 1797 accepted /  2898 generated), "
    "mean acceptance length =  2.24, acceptance rate per position = (0.727, 0.513)"
)
LLAMA_STATS = (
    "statistics draft: #calls(b,g,a) = 1 50 50, #gen drafts = 50, #acc drafts = 30, #gen tokens = 400, "
    "#acc tokens = 90, dur(b,g,a) = 0.1, 20.0, 1.0 ms"
)
LLAMA_RESPONSE = {"content": "x", "id_slot": 0, "timings": {"predicted_n": 64, "draft_n": 40, "draft_n_accepted": 25}}
MLX_RESPONSE = {
    "text": "x",
    "timings": {"draft_kind": "mtp", "draft_rounds": 10, "draft_n": 30, "draft_n_accepted": 12},
}
# TensorRT-LLM per-request (histogram [8, 0, 6, 6]: 20 steps, 30 accepted) and an iteration's stats
TRT_REQUEST = {
    "choices": [
        {
            "index": 0,
            "speculative_decoding": {
                "acceptance_rate": 0.5,
                "total_accepted_draft_tokens": 30,
                "total_draft_tokens": 60,
                "num_spec_steps": 20,
                "acceptance_histogram": [8, 0, 6, 6],
                "num_spec_tokens": 3,
            },
        }
    ]
}
TRT_ITERATIONS = [
    {
        "iter": 1,
        "specDecodingStats": {
            "numDraftTokens": 0,
            "numAcceptedTokens": 0,
            "numRequestsWithDraftTokens": 0,
            "acceptanceLength": 0.0,
        },
    },
    {
        "iter": 2,
        "timestamp": "12:00:01",
        "specDecodingStats": {
            "numDraftTokens": 24,
            "numAcceptedTokens": 10,
            "numRequestsWithDraftTokens": 8,
            "acceptanceLength": 2.25,
            "iterLatencyMS": 3.0,
            "draftOverhead": 0.2,
        },
    },
]
AIPERF_LINE = {
    "metadata": {"session_num": 0, "x_request_id": "abc", "request_start_ns": 1, "request_end_ns": 2},
    "metrics": {},
    "spec_decode_acceptance": {
        "engine": "vllm",
        "mean_acceptance_length": 1.2325581395348837,
        "draft_acceptance_rate": 0.07751937984496124,
        "acceptance_histogram": {"0": 39, "1": 1, "3": 3},
        "num_accepted_draft_tokens": 10,
        "num_draft_tokens": 129,
        "num_spec_steps": 43,
        "num_spec_tokens": 3,
    },
}
