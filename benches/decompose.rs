//! Throughput of reading and decomposing a book: a generated text of one million words
//! (hard-wrapped paragraphs, dialogue, abbreviations, chapter headings), measured in bytes/s.
//!
//! `cargo bench --bench decompose`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rrm::book::Book;
use rrm::decompose::{Decomposer, FixedChunker, FixedConfig};

/// A deterministic text of `words` words.
fn generated_book(words: usize) -> String {
    const VOCAB: &[&str] = &[
        "the",
        "rabbit",
        "said",
        "Alice",
        "garden",
        "queen",
        "very",
        "curious",
        "and",
        "of",
        "remarkable",
        "a",
        "to",
        "in",
        "she",
        "was",
        "conversation",
        "little",
        "thought",
        "door",
    ];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut text = String::with_capacity(words * 7);
    let mut line = 0;
    let mut chapter = 0;
    let mut next_chapter = 0;
    let mut written = 0;
    while written < words {
        if written >= next_chapter {
            chapter += 1;
            next_chapter += 9_000;
            text.push_str(&format!("\n\nCHAPTER {chapter}\n\n"));
        }
        let sentence_len = 4 + next(20);
        match next(10) {
            0 => text.push_str("`Oh dear!' said Mr. Hatter, "),
            1 => text.push('"'),
            _ => {}
        }
        for w in 0..sentence_len {
            let word = VOCAB[next(VOCAB.len())];
            if w == 0 {
                // Sentences start with a capital letter.
                let mut chars = word.chars();
                text.extend(chars.next().map(|c| c.to_ascii_uppercase()));
                text.push_str(chars.as_str());
            } else {
                text.push_str(word);
            }
            line += word.len() + 1;
            written += 1;
            if w + 1 < sentence_len {
                if line > 64 {
                    text.push('\n');
                    line = 0;
                } else {
                    text.push(' ');
                }
            }
        }
        text.push_str([". ", "! ", "? ", ".\" "][next(4)]);
        if next(6) == 0 {
            text.push_str("\n\n  ");
            line = 0;
        }
    }
    text
}

fn bench(c: &mut Criterion) {
    let text = generated_book(1_000_000);
    let book = Book::from_text("generated", &text);
    let chunker = FixedChunker::new(FixedConfig::default()).expect("default config is valid");
    let leaves = chunker.decompose(&book).expect("decomposes").leaves().len();
    eprintln!(
        "generated book: {} bytes, {} words, {} sentences, {} headings, {leaves} leaves",
        text.len(),
        book.word_count(),
        book.sentences().len(),
        book.headings().len()
    );

    let mut group = c.benchmark_group("decompose_1m_words");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("read_and_index", |b| b.iter(|| Book::from_text("generated", &text)));
    group.bench_function("fixed_chunker", |b| {
        b.iter(|| chunker.decompose(&book).expect("decomposes"))
    });
    group.bench_function("end_to_end", |b| {
        b.iter(|| chunker.decompose(&Book::from_text("generated", &text)).expect("decomposes"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
