"""Drives `act-studio serve` with the official `openai` Python package (and plain urllib for
requests the client would refuse to send). Run by tests/serve_openai.rs:

    python3 tests/serve/openai_client.py BASE_URL API_KEY CONCEPT OTHER_CONCEPT OUT.json

Every check asserts; the texts the Rust side compares with the library's own greedy decoding
go to OUT.json. Exit status 0 means every check passed.
"""

import concurrent.futures
import json
import math
import sys
import time
import urllib.error
import urllib.request

import openai

BASE, KEY, CONCEPT, OTHER, OUT = sys.argv[1:6]
ROOT = BASE[: -len("/v1")]
client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=300)
ALIAS = "act-demo"  # given to the server with --alias by tests/serve_openai.rs
CHAT = [{"role": "user", "content": "Tell me about your weekend."}]
PROMPT = "My favourite thing to do on a Saturday is"
results = {}
checks = []


def check(name, ok, detail=""):
    checks.append(name)
    if not ok:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok  {name}", flush=True)


def chat(**kw):
    kw.setdefault("messages", CHAT)
    kw.setdefault("max_tokens", 24)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=MODEL, **kw)


def complete(**kw):
    kw.setdefault("prompt", PROMPT)
    kw.setdefault("max_tokens", 24)
    kw.setdefault("temperature", 0)
    return client.completions.create(model=MODEL, **kw)


def raw(path, body=None, key=KEY, method=None):
    """(status, parsed JSON body) of a request sent as is."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(ROOT + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# --- listing ------------------------------------------------------------------------------
models = client.models.list().data
check("models lists the served model and its alias", len(models) == 2 and models[0].id and models[1].id == ALIAS,
      models)
MODEL = models[0].id
aliased = client.completions.create(model=ALIAS, prompt="The sea is", max_tokens=2, temperature=0)
check("a request by the alias is served and answered with the id", aliased.model == MODEL, aliased)
try:
    client.completions.create(model="gpt-4o-mini", prompt="The sea is", max_tokens=2)
    check("the openai client raises NotFoundError for a model not served", False)
except openai.NotFoundError as e:
    check("the openai client raises NotFoundError for a model not served",
          "gpt-4o-mini" in str(e) and MODEL in str(e), str(e))
# --- the prompt cache ----------------------------------------------------------------------
CACHE_PROMPT = "A prompt that only the prompt cache check sends:"
first_run = complete(prompt=CACHE_PROMPT, max_tokens=6)
again = complete(prompt=CACHE_PROMPT, max_tokens=6)
check("a new prompt has no cached tokens", first_run.usage.prompt_tokens_details.cached_tokens == 0,
      first_run.usage)
check("a repeated prompt comes whole from the prompt cache, with the same text",
      again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens > 0
      and again.choices[0].text == first_run.choices[0].text, (again.usage, again.choices[0].text))
status, health = raw("/health")
check("/health reports the prompt cache",
      status == 200 and health["prompt_cache"]["prompts"] >= 1 and health["prompt_cache"]["bytes"] > 0
      and health["prompt_cache"]["reused_tokens"] >= again.usage.prompt_tokens, health)
steered_again = complete(prompt=CACHE_PROMPT, max_tokens=6, extra_body={"steering": {CONCEPT: 1}})
check("the same prompt with other steering is not taken from the cache",
      steered_again.usage.prompt_tokens_details.cached_tokens == 0, steered_again.usage)
steered_twice = complete(prompt=CACHE_PROMPT, max_tokens=6, extra_body={"steering": {CONCEPT: 1}})
check("with the same steering again it is, with the same text",
      steered_twice.usage.prompt_tokens_details.cached_tokens == steered_twice.usage.prompt_tokens
      and steered_twice.choices[0].text == steered_again.choices[0].text,
      (steered_twice.usage, steered_twice.choices[0].text))

status, concepts = raw("/v1/concepts")
names = [c["name"] for c in concepts["data"]]
check("concepts lists the loaded maps", status == 200 and names == [CONCEPT, OTHER], concepts)
first = concepts["data"][0]
check(
    "a concept carries method, hook points, datasets and fingerprint",
    first["method"] and first["hook_points"] and first["datasets"]["source"]["count"] > 0
    and first["fingerprint"]["architecture"],
    first,
)

# --- chat: plain, λ = 0, steered, streamed ------------------------------------------------
plain = chat()
text = plain.choices[0].message.content
check("chat answers", bool(text) and plain.choices[0].finish_reason in ("stop", "length"), plain)
check(
    "chat usage counts",
    plain.usage.completion_tokens > 0
    and plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens,
    plain.usage,
)
zero = chat(extra_body={"steering": {CONCEPT: 0.0}})
check("chat with λ = 0 is the unsteered text", zero.choices[0].message.content == text, (zero, text))
steered = chat(extra_body={"steering": {CONCEPT: 1.0}})
check("chat with λ = 1 changes the text", steered.choices[0].message.content != text, steered)
results["chat_plain"] = text
results["chat_steered"] = steered.choices[0].message.content

pieces, finishes, usage, roles = [], [], None, 0
for chunk in chat(stream=True, stream_options={"include_usage": True}):
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.role == "assistant":
            roles += 1
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finishes.append(c.finish_reason)
check("chat stream equals the whole answer", "".join(pieces) == text, ("".join(pieces), text))
check("chat stream: one role chunk, one finish", roles == 1 and finishes == [plain.choices[0].finish_reason])
check("chat stream: usage chunk", usage is not None and usage.completion_tokens == plain.usage.completion_tokens)

# --- completions --------------------------------------------------------------------------
cplain = complete()
ctext = cplain.choices[0].text
results["completion_plain"] = ctext
results["completion_prompt_tokens"] = cplain.usage.prompt_tokens
check("completion answers", bool(ctext), cplain)
czero = complete(extra_body={"steering": {CONCEPT: 0.0, OTHER: 0.0}})
check("completion with λ = 0 is the unsteered text", czero.choices[0].text == ctext)
cst = "".join(c.choices[0].text for c in complete(stream=True) if c.choices)
check("completion stream equals the whole answer", cst == ctext, (cst, ctext))
csteer = complete(extra_body={"steering": {CONCEPT: 1.0}, "steering_scope": "generated"})
check("completion steered on generated tokens changes the text", csteer.choices[0].text != ctext)

# stop: cut at the first occurrence of a word from inside the greedy text
words = ctext.split()
stop_word = " " + words[len(words) // 2]
cut = ctext[: ctext.find(stop_word)]
stopped = complete(stop=[stop_word, "\u2603never"])
check(
    "a stop sequence ends the text before it",
    stopped.choices[0].text == cut and stopped.choices[0].finish_reason == "stop",
    (stopped.choices[0].text, cut),
)
sst = "".join(c.choices[0].text for c in complete(stream=True, stop=stop_word) if c.choices)
check("a stop sequence ends the stream before it", sst == cut, (sst, cut))

# n samples = one request per seed
many = complete(n=3, temperature=0.9, seed=11, max_tokens=16)
singles = [complete(n=1, temperature=0.9, seed=11 + i, max_tokens=16).choices[0].text for i in range(3)]
check("n = 3 gives three choices", [c.index for c in many.choices] == [0, 1, 2])
check("sample i of n draws with seed + i", [c.text for c in many.choices] == singles, (many, singles))
check("samples differ", len(set(singles)) > 1, singles)

# frequency and presence penalties (OpenAI's rule), and llama.cpp's repeat_penalty
REP = "one, two, one, two, one, two,"
unpenalized = complete(prompt=REP, max_tokens=24).choices[0].text
frequency = complete(prompt=REP, max_tokens=24, frequency_penalty=1.5).choices[0].text
saturday = complete(max_tokens=24).choices[0].text
presence = complete(max_tokens=24, presence_penalty=2).choices[0].text
rewarded = complete(max_tokens=24, presence_penalty=-2).choices[0].text
repeat = complete(prompt=REP, max_tokens=24, extra_body={"repeat_penalty": 1.3}).choices[0].text
check("penalties of 0 give the unpenalized text",
      complete(prompt=REP, max_tokens=24, frequency_penalty=0, presence_penalty=0).choices[0].text == unpenalized)
check("a frequency penalty changes a greedy text and repeats its commas less",
      frequency != unpenalized and frequency.count(",") < unpenalized.count(","), (unpenalized, frequency))
distinct_share = lambda text: len(set(text.split())) / max(1, len(text.split()))
check("a presence penalty changes a greedy text", presence != saturday, (saturday, presence))
check("a negative presence penalty makes it repeat itself more",
      distinct_share(rewarded) < distinct_share(saturday), (saturday, rewarded))
check("repeat_penalty changes a greedy text", repeat != unpenalized, (unpenalized, repeat))

# logit_bias: +100 all but forces a token, −100 bans it (token 1000 is "()" in SmolLM2)
forced = complete(max_tokens=6, logprobs=0, logit_bias={"1000": 100}).choices[0].logprobs.tokens
check("logit_bias +100 forces one token at every step", len(forced) == 6 and len(set(forced)) == 1, forced)
# After "()" eight times (as token ids) the greedy text starts with "-", token 29.
PARENS = [1000] * 8
loop = complete(prompt=PARENS, max_tokens=6, logprobs=0).choices[0].logprobs.tokens
dash = complete(prompt="x", max_tokens=1, logprobs=0, logit_bias={"29": 100}).choices[0].logprobs.tokens
banned = complete(prompt=PARENS, max_tokens=6, logprobs=0, logit_bias={"29": -100}).choices[0].logprobs.tokens
check("logit_bias −100 bans the token greedy decoding would pick",
      dash == ["-"] and loop[0] == "-" and "-" not in banned, (dash, loop, banned))

# --- log-probabilities ----------------------------------------------------------------------
def close(a, b, tol=1e-4):
    return abs(a - b) <= tol


lp = chat(logprobs=True, top_logprobs=3)
entries = lp.choices[0].logprobs.content
check("chat logprobs leave the text as it was", lp.choices[0].message.content == text, lp)
check("chat logprobs: one entry per token, texts joined = the answer",
      "".join(e.token for e in entries) == text and len(entries) == lp.usage.completion_tokens, entries)
check("chat logprobs: bytes joined decode to the answer",
      bytes(b for e in entries for b in e.bytes).decode("utf-8") == text)
check("chat logprobs: 3 alternatives, most likely first, greedy picks the first",
      all(len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
          and close(e.top_logprobs[0].logprob, e.logprob)
          and e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob
          and e.logprob <= 0 for e in entries), entries)
check("chat logprobs: the alternatives' probabilities sum to at most 1",
      all(sum(math.exp(t.logprob) for t in e.top_logprobs) <= 1 + 1e-5 for e in entries))
streamed = []
for chunk in chat(stream=True, logprobs=True, top_logprobs=3):
    for c in chunk.choices:
        if c.logprobs is not None and c.logprobs.content:
            streamed.extend(c.logprobs.content)
check("chat stream logprobs equal the whole answer's",
      [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries])
check("no logprobs unless asked", plain.choices[0].logprobs is None)

clp = complete(logprobs=2)
l = clp.choices[0].logprobs
check("completion logprobs: tokens joined = the text", "".join(l.tokens) == ctext, l)
check("completion logprobs: offsets count the characters before each token",
      l.text_offset == [len("".join(l.tokens[:i])) for i in range(len(l.tokens))], l.text_offset)
check("completion logprobs: the chosen token is the most likely (greedy)",
      all(len(t) == 2 and close(max(t.values()), v) for t, v in zip(l.top_logprobs, l.token_logprobs)), l)
cstream = []
for chunk in complete(stream=True, logprobs=2):
    for c in chunk.choices:
        if c.logprobs is not None:
            cstream.extend(zip(c.logprobs.tokens, c.logprobs.token_logprobs, c.logprobs.text_offset))
check("completion stream logprobs equal the whole answer's",
      cstream == list(zip(l.tokens, l.token_logprobs, l.text_offset)), (cstream, l))
clp_steer = complete(logprobs=0, max_tokens=1, extra_body={"steering": {CONCEPT: 1.0}})
check("steering changes the log-probabilities",
      not close(clp_steer.choices[0].logprobs.token_logprobs[0], l.token_logprobs[0], 1e-3)
      or clp_steer.choices[0].logprobs.tokens[0] != l.tokens[0], clp_steer)
results["completion_logprobs"] = l.token_logprobs

# --- echo: the prompt scored (as lm-evaluation-harness asks) and echoed before the completion
escore = complete(echo=True, max_tokens=0, logprobs=1)
e = escore.choices[0]
check("echo with max_tokens 0 gives the prompt back and nothing more",
      e.text == PROMPT and e.finish_reason == "length" and escore.usage.completion_tokens == 0, escore)
el = e.logprobs
check("echo logprobs: one entry per prompt token, texts joined = the prompt",
      len(el.tokens) == cplain.usage.prompt_tokens and "".join(el.tokens) == PROMPT, el)
check("echo logprobs: the first token's is null, the others ≤ 0 with one alternative",
      el.token_logprobs[0] is None and el.top_logprobs[0] is None
      and all(v <= 0 and len(t) == 1 for v, t in zip(el.token_logprobs[1:], el.top_logprobs[1:])), el)
results["echo_logprobs"] = el.token_logprobs[1:]
ewith = complete(echo=True)
check("echo then the completion: the prompt and the plain completion",
      ewith.choices[0].text == PROMPT + ctext, (ewith, ctext))
est = "".join(c.choices[0].text for c in complete(stream=True, echo=True) if c.choices)
check("echo stream equals the whole answer", est == PROMPT + ctext, est)
esteer = complete(echo=True, max_tokens=0, logprobs=0, extra_body={"steering": {CONCEPT: 1.0}})
check("steering changes the echoed prompt's log-probabilities",
      any(not close(a, b, 1e-3) for a, b in zip(esteer.choices[0].logprobs.token_logprobs[1:],
                                                el.token_logprobs[1:])), esteer)

# --- concurrency: 8 requests together = the same 8 one at a time --------------------------
lambdas = [0.0, 0.25, 0.5, 0.75, 1.0, -0.5, 0.6, 0.0]


def job(i):
    steering = {CONCEPT: lambdas[i]} if i % 2 == 0 else {CONCEPT: lambdas[i], OTHER: 0.5}
    kw = dict(temperature=0.8, seed=100 + i, max_tokens=32, extra_body={"steering": steering})
    if i % 3 == 0:
        return chat(**kw).choices[0].message.content
    return complete(**kw).choices[0].text


one_by_one = [job(i) for i in range(8)]
start = time.time()
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    together = list(pool.map(job, range(8)))
check("8 concurrent requests equal the same requests sent one at a time", together == one_by_one,
      json.dumps([together, one_by_one], indent=1))
check("the 8 requests differ from each other", len(set(one_by_one)) >= 6, one_by_one)

# --- bad requests: status, message, and the server still answers --------------------------
def bad(name, status, param_or_code, path, body, key=KEY):
    got, answer = raw(path, body, key=key)
    err = answer.get("error", {})
    check(
        f"{name} → {status}",
        got == status and err.get("message") and param_or_code in (err.get("param"), err.get("code"), None),
        (got, answer),
    )
    print(f"    {err.get('message')}")
    check(f"after {name} the server answers", chat(max_tokens=2).choices[0].message.content is not None)


CHATP = "/v1/chat/completions"
body = {"model": MODEL, "messages": CHAT, "max_tokens": 4}
bad("unknown concept", 400, "unknown_concept", CHATP, {**body, "steering": {"nonexistent": 1}})
bad("λ out of range", 400, "invalid_lambda", CHATP, {**body, "steering": {CONCEPT: 2.5}})
bad("λ not finite", 400, None, CHATP, b'{"messages": [{"role": "user", "content": "hi"}], "steering": {"%s": 1e999}}' % CONCEPT.encode())
bad("λ not a number", 400, None, CHATP, {**body, "steering": {CONCEPT: "strong"}})
bad("prompt longer than the context", 400, "context_length_exceeded", "/v1/completions",
    {"model": MODEL, "prompt": "word " * 9000, "max_tokens": 4})
bad("budget beyond the context", 400, "context_length_exceeded", CHATP, {**body, "max_tokens": 10**9})
bad("bad JSON", 400, None, CHATP, b'{"messages": [')
bad("wrong field type", 400, None, CHATP, {**body, "messages": "hi"})
bad("empty messages", 400, "messages", CHATP, {**body, "messages": []})
bad("unknown role", 400, "messages", CHATP, {**body, "messages": [{"role": "robot", "content": "x"}]})
bad("temperature out of range", 400, "temperature", CHATP, {**body, "temperature": 5})
bad("frequency_penalty out of range", 400, "frequency_penalty", CHATP, {**body, "frequency_penalty": 2.5})
bad("presence_penalty out of range", 400, "presence_penalty", CHATP, {**body, "presence_penalty": -3})
bad("repeat_penalty out of range", 400, "repeat_penalty", CHATP, {**body, "repeat_penalty": 0})
bad("logit_bias key not a token id", 400, "logit_bias", CHATP, {**body, "logit_bias": {"hello": 5}})
bad("logit_bias token outside the vocabulary", 400, "logit_bias", CHATP, {**body, "logit_bias": {"99999999": 5}})
bad("logit_bias beyond ±100", 400, "logit_bias", CHATP, {**body, "logit_bias": {"5": 101}})
bad("body over the size limit", 413, None, CHATP, {**body, "messages": [{"role": "user", "content": "x" * 200_000}]})
bad("logprobs not a boolean in chat", 400, "logprobs", CHATP, {**body, "logprobs": 2})
bad("top_logprobs over 20", 400, "top_logprobs", CHATP, {**body, "logprobs": True, "top_logprobs": 21})
bad("wrong API key", 401, "invalid_api_key", CHATP, body, key="wrong")
bad("missing API key", 401, "invalid_api_key", CHATP, body, key=None)
bad("unknown endpoint", 404, None, "/v1/embeddings", body)
bad("a model not served", 404, "model_not_found", CHATP, {**body, "model": "not-" + MODEL})
bad("echo in chat", 400, "echo", CHATP, {**body, "echo": True})
bad("max_tokens 0 without echo", 400, "max_tokens", "/v1/completions",
    {"model": MODEL, "prompt": PROMPT, "max_tokens": 0})
try:
    chat(extra_body={"steering": {"nonexistent": 1}})
    check("the openai client raises BadRequestError for an unknown concept", False)
except openai.BadRequestError as e:
    check("the openai client raises BadRequestError for an unknown concept", "nonexistent" in str(e), str(e))

# --- a client that goes away cancels its rows ---------------------------------------------
def running_after_wait(seconds=20):
    """The running rows once none are left, or after `seconds`."""
    deadline = time.time() + seconds
    running = None
    while time.time() < deadline:
        running = raw("/health", method="GET")[1]["running"]
        if running == 0:
            break
        time.sleep(0.1)
    return running


abandoned_before = raw("/health", method="GET")[1]["abandoned"]
stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3000, temperature=0.9,
                                   seed=3, stream=True)
for i, _ in enumerate(stream):
    if i == 3:
        break
stream.close()
running = running_after_wait()
check("a disconnected stream stops decoding", running == 0, running)
abandoned = raw("/health", method="GET")[1]["abandoned"]
check("the engine counts the stream's row as abandoned", abandoned == abandoned_before + 1,
      (abandoned_before, abandoned))

# A whole (non-streamed) answer whose client gives up: the closed connection ends its rows too.
# The end-of-text tokens (ids 0 and 2) are banned, so the answer cannot end before the client
# gives up (an unbanned one could end within the second: 3000 tokens at several hundred a
# second may stop at the first end-of-text).
slow = urllib.request.Request(
    BASE + "/completions",
    data=json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": 3000, "temperature": 0.9,
                     "seed": 5, "logit_bias": {"0": -100, "2": -100}}).encode(),
    method="POST",
)
slow.add_header("Content-Type", "application/json")
slow.add_header("Authorization", f"Bearer {KEY}")
gave_up = False
try:
    urllib.request.urlopen(slow, timeout=1.0)
except (TimeoutError, OSError):
    gave_up = True
check("the slow whole answer was abandoned by its client", gave_up)
running = running_after_wait()
check("a disconnected whole answer stops decoding", running == 0, running)
check("the engine counts the whole answer's row as abandoned (not run to its end)",
      raw("/health", method="GET")[1]["abandoned"] == abandoned + 1)
check("after a disconnected answer the server answers", chat(max_tokens=2).choices[0].message.content is not None)

with open(OUT, "w") as f:
    json.dump(results, f)
print(f"all {len(checks)} checks passed")
