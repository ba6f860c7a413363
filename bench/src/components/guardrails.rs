//! Guardrail figure: how fast the whole detector set scans typical prompt text.

use sluice::guardrails::Scanner;

/// Scans `mb` MiB of synthetic but typical prompt traffic (prose, code, JSON, numbers,
/// the odd email and key) with [`Scanner::all`] and returns throughput in MB/s. For the
/// benchmark harness; never asserted on in tests.
pub fn scan(mb: usize) -> f64 {
    let scanner = Scanner::all();
    let text = bench_corpus(mb.max(1) << 20);
    // Scan prompt-sized pieces, as the proxy does per message.
    let pieces: Vec<&str> = split_on_char_boundaries(&text, 16 << 10);
    let _warm = scanner.scan(pieces[0]);
    let start = std::time::Instant::now();
    let mut n = 0usize;
    for p in &pieces {
        n += scanner.scan(p).len();
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    std::hint::black_box(n);
    text.len() as f64 / 1e6 / secs
}

fn split_on_char_boundaries(text: &str, size: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + size).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        out.push(&text[start..end]);
        start = end;
    }
    out
}

fn bench_corpus(bytes: usize) -> String {
    const PARTS: [&str; 8] = [
        "You are a helpful assistant. Summarise the following customer email in three bullet \
         points and suggest a polite reply. Keep the tone friendly and avoid jargon.\n",
        "Hi team, the deploy on 2024-03-14 at 10:32:05 failed with exit code 137 after 45 \
         minutes. Version 1.24.3 of the chart was used; order #48213 is still pending. \
         Contact jane.doe@example.com if it happens again.\n",
        "```rust\nfn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * 2).collect();\n    \
         println!(\"{:?}\", v);\n    std::process::exit(0);\n}\n```\n",
        "{\"model\": \"gpt-4o\", \"temperature\": 0.2, \"max_tokens\": 512, \"messages\": \
         [{\"role\": \"user\", \"content\": \"Translate to French: the weather is nice\"}]}\n",
        "Explain the difference between TCP and UDP for a beginner, with an analogy about \
         postal mail and phone calls. Then list 5 common ports such as 22, 80 and 443.\n",
        "Commit 3f2a9c1d0e8b7a6f5e4d3c2b1a0f9e8d7c6b5a49 fixed the regression; request id \
         123e4567-e89b-12d3-a456-426614174000 shows the retry at 14:02.\n",
        "Please review this SQL: SELECT id, name FROM users WHERE created_at > now() - \
         interval '7 days' ORDER BY id LIMIT 100;\n",
        "The quarterly numbers were 12,400 units in Q1 and 15,250 in Q2, an increase of \
         about 23 percent. Write a short paragraph for the board.\n",
    ];
    let mut s = String::with_capacity(bytes + 512);
    let mut i = 0;
    while s.len() < bytes {
        s.push_str(PARTS[i % PARTS.len()]);
        i += 1;
    }
    s
}
