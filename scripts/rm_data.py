#!/usr/bin/env python3
"""Convert public human-preference and human-rating data for summaries into the JSONL that
`rrm reward train --data` and `rrm reward eval --data` read. Standard library only.

Every output line is one of
  a pair:   {"prompt", "chosen", "rejected", "height", "group", "kind", "weight", "references"?}
  a rating: {"prompt", "completion", "likert": {"overall", "coverage", "accuracy", "coherence"},
             "labeler", "height", "group", "kind": "likert"}
`prompt` is the text summarized (the node's input), `group` keeps one source document on one
side of the train / validation / test split, `kind` says where a pair comes from (`comparison`:
a person compared the two; `demonstration`: a person wrote `chosen`; `synthetic`: a script
judged the pair, never a person). Likert scores are mapped onto rrm's 1-7 scale.

The data files themselves never enter the repository: fetch them from the public repositories
named below and write the output outside the repository (we use /work/data/rm/).

Sources (repository, file, licence):
  HELD OUT: evaluation only, never training or tuning
  - tiiiger: Tiiiger/benchmark_llm_summarization, pairwise_evaluation_results.json
    (Zhang et al. 2023, "Benchmarking Large Language Models for News Summarization"): freelance
    writers' summaries vs text-davinci-002's on CNN/DM and XSum articles, `overall_writer_better`.
    The repository states no licence; articles are from CNN/DM and XSum.
  - squality-human-eval: nyu-mll/SQuALITY, data/human-eval/all-responses.jsonl with the stories
    of data/v1-3/txt/test.jsonl (Wang et al. 2022). Summaries CC BY 4.0; stories Project
    Gutenberg licence. Per reviewer, the plot question's three responses (BART, BART+DPR,
    human) ordered by that reviewer's overall rating.
  - booookscore: lilakk/BooookScore, annotations/human_annotations/qualitative_comparison/
    {pilot,formal}/annotator*.json (Chang et al. 2024), MIT licence. Which of two GPT-4 book
    summaries the annotator preferred; the books are not public, so the prompt names the book.
  TRAINING (never evaluated on as "held out")
  - squality-pairs: /work/shared/data/squality/{train,dev}.jsonl (SQuALITY v1.3; summaries
    CC BY 4.0) with the 135M policy's root candidates (scripts/rm_squality_candidates.sh): human
    reference > model candidate (kind demonstration), and model vs model judged by ROUGE
    against the four references (kind synthetic).
  - frank: artidoro/frank, data/human_annotations.json and the articles and summaries of
    data/articles-wdep-json/*.json at commit 5860706 (Pagnoni et al. 2021), MIT licence.
    Human factuality scores of 4-5 systems' summaries per CNN/DM or XSum article; within an
    article the more factual summary is chosen (kind comparison), and the article's human
    reference summary beats each system summary (kind demonstration).
  - dialsummeval: kite99520/DialSummEval, annotation_campus/human_judgment.jsonl (Gao and Wan
    2022); no licence file in the repository (SAMSum dialogues: CC BY-NC-ND 4.0), used here for
    research only. Three annotators' 1-5 ratings (consistency, relevance, fluency, coherence)
    of 14 systems' and the reference summaries of 100 dialogues, as Likert ratings.

Training sets can drop every document that is a near-duplicate of a held-out one
(`--exclude FILE...`: 5-word shingles, Jaccard >= 0.5, the rule `rrm` itself groups by).
"""

import argparse
import glob
import hashlib
import json
import os
import random
import re
import subprocess
import sys

# ----------------------------------------------------------------------------- helpers


def words(text):
    return re.findall(r"[a-z0-9']+", text.lower())


def shingles(text, n=5):
    w = words(text)
    if len(w) <= n:
        return {" ".join(w)}
    return {" ".join(w[i : i + n]) for i in range(len(w) - n + 1)}


class NearDuplicates:
    """Prompts of held-out files, to drop training documents that repeat them."""

    def __init__(self, paths):
        self.sets = []
        for path in paths or []:
            with open(path, encoding="utf-8") as f:
                prompts = {json.loads(l)["prompt"] for l in f if l.strip()}
            self.sets.extend(shingles(p) for p in prompts)

    def hit(self, text):
        s = shingles(text)
        for t in self.sets:
            common = len(s & t)
            if common and common / len(s | t) >= 0.5:
                return True
        return False


def ngrams(tokens, n):
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def rouge_f(candidate, reference, n):
    c, r = ngrams(words(candidate), n), ngrams(words(reference), n)
    if not c or not r:
        return 0.0
    counts = {}
    for g in r:
        counts[g] = counts.get(g, 0) + 1
    hit = 0
    for g in c:
        if counts.get(g, 0) > 0:
            counts[g] -= 1
            hit += 1
    if hit == 0:
        return 0.0
    p, rec = hit / len(c), hit / len(r)
    return 2 * p * rec / (p + rec)


def rouge_multi(candidate, references):
    """Mean over references of (ROUGE-1 F + ROUGE-2 F) / 2."""
    vals = [(rouge_f(candidate, r, 1) + rouge_f(candidate, r, 2)) / 2 for r in references]
    return sum(vals) / len(vals) if vals else 0.0


def digest(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_jsonl(rows, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows)} rows", file=sys.stderr)


def pair(prompt, chosen, rejected, group, kind, height=0, weight=None, references=None):
    row = {
        "prompt": prompt.strip(),
        "chosen": chosen.strip(),
        "rejected": rejected.strip(),
        "height": height,
        "group": group,
        "kind": kind,
    }
    if weight is not None:
        row["weight"] = round(weight, 4)
    if references:
        row["references"] = [r.strip() for r in references]
    return row


def to7(v, lo, hi):
    """A score on [lo, hi] onto rrm's 1..7 Likert scale (integer)."""
    x = 1 + (float(v) - lo) * 6.0 / (hi - lo)
    return int(min(7, max(1, round(x))))


def git_show(repo, rev, path):
    return subprocess.run(
        ["git", "--git-dir", repo, "show", f"{rev}:{path}"],
        check=True,
        capture_output=True,
    ).stdout.decode("utf-8")


# ----------------------------------------------------------------------------- held out


def tiiiger(args):
    data = json.load(open(args.input, encoding="utf-8"))
    rows = []
    for x in data:
        o = x["overall_writer_better"]
        if o == "Equally Good" or o not in (True, False):
            continue
        w, m = x["writer_summary"], x["text-davinci-002_summary"]
        chosen, rejected = (w, m) if o is True else (m, w)
        rows.append(pair(x["article_text"], chosen, rejected, "news:" + x["article_id"], "comparison"))
    write_jsonl(rows, args.out)


def squality_human_eval(args):
    stories = {}
    for line in open(args.stories, encoding="utf-8"):
        s = json.loads(line)
        stories[s["metadata"]["passage_id"]] = s
    rows = []
    for line in open(args.input, encoding="utf-8"):
        x = json.loads(line)
        pid = x["passage-id"]
        story = stories.get(pid)
        if story is None:
            print(f"passage {pid}: no story in {args.stories}; skipped", file=sys.stderr)
            continue
        q = x["questions"]["0"]
        refs = [r["response_text"] for r in story["questions"][0]["responses"]]
        # Per reviewer: every system they rated, by overall rating.
        by_worker = {}
        for system, entry in q.items():
            if not isinstance(entry, dict) or "reviews" not in entry:
                continue
            for rev in entry["reviews"]:
                by_worker.setdefault(rev["worker_id"], []).append(
                    (rev["overall-rating"], system, entry["response"])
                )
        for worker, rated in sorted(by_worker.items()):
            for i in range(len(rated)):
                for j in range(i + 1, len(rated)):
                    (ri, si, ti), (rj, sj, tj) = rated[i], rated[j]
                    if ri == rj or ti.strip() == tj.strip():
                        continue
                    chosen, rejected = (ti, tj) if ri > rj else (tj, ti)
                    # The human response is one of the four references: compare only with the
                    # other three, or the overlap baseline would see the answer.
                    others = [r for r in refs
                              if max(rouge_f(ti, r, 1), rouge_f(tj, r, 1)) < 0.9]
                    rows.append(
                        pair(story["document"], chosen, rejected, "squality:" + pid,
                             "comparison", height=1, references=others)
                    )
    write_jsonl(rows, args.out)


def booookscore(args):
    rows = []
    for path in sorted(glob.glob(os.path.join(args.input, "*", "annotator*.json"))):
        if path.endswith("-counts.json"):
            continue
        for x in json.load(open(path, encoding="utf-8")):
            book = x["data"]["book"]
            s1, s2 = x["data"]["summary_1"], x["data"]["summary_2"]
            for a in x["annotations"]:
                for r in a["result"]:
                    if r.get("from_name") != "preference":
                        continue
                    choice = (r["value"].get("choices") or [""])[0]
                    if choice not in ("Summary 1", "Summary 2"):
                        continue
                    chosen, rejected = (s1, s2) if choice == "Summary 1" else (s2, s1)
                    title = book.rsplit(".", 1)[0].replace("-", " ")
                    prompt = f"The book \"{title}\" (its text is not public; only its title is given)."
                    rows.append(pair(prompt, chosen, rejected, "booookscore:" + book, "comparison", height=2))
    write_jsonl(rows, args.out)


# ----------------------------------------------------------------------------- training


def squality_stories(args):
    os.makedirs(args.out, exist_ok=True)
    n = 0
    for split in ("train", "dev"):
        for line in open(os.path.join(args.input, f"{split}.jsonl"), encoding="utf-8"):
            s = json.loads(line)
            pid = s["metadata"]["passage_id"]
            with open(os.path.join(args.out, f"squality_{split}_{pid}.txt"), "w", encoding="utf-8") as f:
                f.write(s["document"].strip() + "\n")
            n += 1
    print(f"{args.out}: {n} stories", file=sys.stderr)


def cut_to_words(text, n):
    """`text` cut after the sentence whose end is nearest `n` words, or None when no cut is
    within 15% of `n` or the text is no longer than that anyway."""
    sentences = re.findall(r"[^.!?]+[.!?]+[\"')\]]*\s*", text)
    best, words_so_far, out = None, 0, []
    for s in sentences:
        out.append(s)
        words_so_far += len(s.split())
        if best is None or abs(words_so_far - n) < abs(best[0] - n):
            best = (words_so_far, "".join(out).strip())
    if best is None or abs(best[0] - n) > 0.15 * n or best[0] >= len(text.split()):
        return None
    return best[1]


def squality_pairs(args):
    """NODES: the folder of root-node JSON files that scripts/rm_squality_candidates.sh writes
    (`rrm node show ROOT --json`, whose `stored_candidates` hold the composer's summary and the
    ones `rrm node sample` drew). `--prompt story` (default) pairs the summaries with the story
    itself at height 1, as the held-out SQuALITY human evaluation is laid out; `--prompt root`
    with the root node's own input (its children's summaries) at the root's height, as the
    composer scores them."""
    stories = {}
    for split in ("train", "dev"):
        for line in open(os.path.join(args.input, f"{split}.jsonl"), encoding="utf-8"):
            s = json.loads(line)
            refs = [r["response_text"] for r in s["questions"][0]["responses"]]
            stories[f"squality_{split}_{s['metadata']['passage_id']}"] = (s["document"], refs)
    rng = random.Random(args.seed)
    rows, counts = [], {"demonstration": 0, "synthetic": 0}
    for path in sorted(glob.glob(os.path.join(args.nodes, "*.json"))):
        name = os.path.basename(path)[: -len(".json")]
        if name not in stories:
            print(f"{path}: no SQuALITY story {name}; skipped", file=sys.stderr)
            continue
        node = json.load(open(path, encoding="utf-8"))
        stored = node.get("stored_candidates")
        if stored is None:
            sys.exit(f"{path}: no stored_candidates (written by an rrm older than `node show` "
                     "listing them; run `rrm node show ROOT --json` again)")
        document, refs = stories[name]
        if args.prompt == "story":
            prompt, height = document, 1
        else:
            prompt, height = node["result"]["candidates"]["input"], node["height"]
        cands = [t for t in dict.fromkeys(c["text"].strip() for c in stored) if t]
        group = "squality:" + name.rsplit("_", 1)[-1]
        # Easy, human: each reference (a demonstration) beats model candidates. References are
        # about twice as long as the 135M model's summaries, so these pairs alone teach "longer
        # wins"; `--length-matched` adds the same pair with the reference cut at the sentence
        # end nearest the candidate's length (a human's opening vs the model's whole summary of
        # that length), where length says nothing.
        for ref in refs:
            for cand in rng.sample(cands, min(args.per_reference, len(cands))):
                rows.append(pair(prompt, ref, cand, group, "demonstration", height))
                counts["demonstration"] += 1
                cut = cut_to_words(ref, len(cand.split())) if args.length_matched else None
                if cut:
                    rows.append(pair(prompt, cut, cand, group, "demonstration", height))
                    counts["length-matched"] = counts.get("length-matched", 0) + 1
        # Harder, synthetic: model vs model, the one closer to the references (ROUGE) wins when
        # the gap is clear; a script's judgement, so it weighs less.
        scored = [(rouge_multi(t, refs), t) for t in cands]
        for i in range(len(scored)):
            for j in range(i + 1, len(scored)):
                (a, ta), (b, tb) = scored[i], scored[j]
                if abs(a - b) < args.margin:
                    continue
                chosen, rejected = (ta, tb) if a > b else (tb, ta)
                rows.append(pair(prompt, chosen, rejected, group, "synthetic", height,
                                 weight=args.synthetic_weight, references=refs))
                counts["synthetic"] += 1
    rng.shuffle(rows)
    print(f"pairs by kind: {counts}", file=sys.stderr)
    write_jsonl(rows, args.out)


def frank(args):
    exclude = NearDuplicates(args.exclude)
    repo = args.repo
    ann = json.loads(git_show(repo, "HEAD", "data/human_annotations.json"))
    by_article = {}
    for a in ann:
        if args.split and a.get("split") != args.split:
            continue
        by_article.setdefault(a["hash"], []).append(a)
    names = {  # FRANK model names → keys in the article files
        "bart": "bart", "bert_sum": "bert_sum", "bus": "bus", "pgn": "pgn", "s2s": "s2s",
        "BERTS2S": "BERTS2S", "PtGen": "PtGen", "TConvS2S": "TConvS2S", "TranS2S": "TranS2S",
    }
    rows, dropped = [], 0
    for h, items in sorted(by_article.items()):
        try:
            art = json.loads(git_show(repo, args.rev, f"data/articles-wdep-json/{h}.json"))
        except subprocess.CalledProcessError:
            continue
        article = art.get("article", "")
        if not article.strip():
            continue
        if exclude.hit(article):
            dropped += 1
            continue
        # The article's reference summary (CNN/DM highlights or the XSum lead sentence, both
        # written by people): a demonstration that beats every system summary, and the
        # reference for the overlap baseline.
        reference = next((art[k] for k in sorted(art) if k.endswith("_reference")
                          and isinstance(art[k], str) and art[k].strip()), None)
        refs = [reference] if reference else None
        scored = []
        for a in items:
            text = art.get(names.get(a["model_name"], a["model_name"]))
            if isinstance(text, str) and text.strip():
                scored.append((float(a["Factuality"]), text))
        for i in range(len(scored)):
            for j in range(i + 1, len(scored)):
                (fa, ta), (fb, tb) = scored[i], scored[j]
                if abs(fa - fb) < args.margin or ta.strip() == tb.strip():
                    continue
                chosen, rejected = (ta, tb) if fa > fb else (tb, ta)
                rows.append(pair(article, chosen, rejected, "frank:" + h, "comparison",
                                 weight=min(1.0, abs(fa - fb) / 0.5), references=refs))
        if reference and not args.no_demonstrations:
            for _, text in scored:
                if text.strip().lower() != reference.strip().lower():
                    rows.append(pair(article, reference, text, "frank:" + h, "demonstration"))
    print(f"frank: {dropped} article(s) dropped as near-duplicates of held-out data", file=sys.stderr)
    write_jsonl(rows, args.out)


def dialsummeval(args):
    exclude = NearDuplicates(args.exclude)
    rows, dropped = [], set()
    for line in open(args.input, encoding="utf-8"):
        x = json.loads(line)
        dialogue = "\n".join(t.strip() for t in x["dialogue"].split("|") if t.strip())
        if exclude.hit(dialogue):
            dropped.add(x["id"])
            continue
        for k, a in enumerate(x["annotations"]):
            dims = [a["consistency"], a["relevance"], a["fluency"], a["coherence"]]
            rows.append({
                "prompt": dialogue,
                "completion": x["summary"].strip(),
                "likert": {
                    "coverage": to7(a["relevance"], 1, 5),
                    "accuracy": to7(a["consistency"], 1, 5),
                    "coherence": to7(a["coherence"], 1, 5),
                    "overall": to7(sum(dims) / 4.0, 1, 5),
                },
                "labeler": f"dialsummeval-{k + 1}",
                "height": 0,
                "group": "samsum:" + x["id"],
                "kind": "likert",
            })
    print(f"dialsummeval: {len(dropped)} dialogue(s) dropped", file=sys.stderr)
    write_jsonl(rows, args.out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("tiiiger"); s.add_argument("input"); s.add_argument("out"); s.set_defaults(f=tiiiger)
    s = sub.add_parser("squality-human-eval"); s.add_argument("input"); s.add_argument("stories"); s.add_argument("out")
    s.set_defaults(f=squality_human_eval)
    s = sub.add_parser("booookscore", help="INPUT: the qualitative_comparison folder")
    s.add_argument("input"); s.add_argument("out"); s.set_defaults(f=booookscore)
    s = sub.add_parser("squality-stories"); s.add_argument("input"); s.add_argument("out"); s.set_defaults(f=squality_stories)
    s = sub.add_parser("squality-pairs", help="INPUT: the SQuALITY folder; NODES: root-node JSON files")
    s.add_argument("input"); s.add_argument("nodes"); s.add_argument("out")
    s.add_argument("--prompt", choices=("story", "root"), default="story")
    s.add_argument("--per-reference", type=int, default=2, help="model candidates each reference beats")
    s.add_argument("--synthetic-weight", type=float, default=0.5, help="loss weight of a ROUGE-judged pair")
    s.add_argument("--length-matched", action="store_true",
                   help="also the reference cut to each candidate's length > the candidate")
    s.add_argument("--margin", type=float, default=0.02, help="least ROUGE gap for a synthetic pair")
    s.add_argument("--seed", type=int, default=0); s.set_defaults(f=squality_pairs)
    s = sub.add_parser("frank", help="REPO: the git directory of a FRANK snapshot")
    s.add_argument("repo"); s.add_argument("out"); s.add_argument("--rev", default="5860706")
    s.add_argument("--margin", type=float, default=0.2); s.add_argument("--exclude", nargs="*")
    s.add_argument("--split", choices=("test", "valid"),
                   help="only FRANK's own test or validation articles (its `split` field)")
    s.add_argument("--no-demonstrations", action="store_true",
                   help="no reference > system summary pairs")
    s.set_defaults(f=frank)
    s = sub.add_parser("dialsummeval"); s.add_argument("input"); s.add_argument("out")
    s.add_argument("--exclude", nargs="*"); s.set_defaults(f=dialsummeval)
    args = p.parse_args()
    args.f(args)


if __name__ == "__main__":
    main()
