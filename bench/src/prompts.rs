//! The reference study's ten prompts, the default workload.

pub const DEFAULT_PROMPTS: [&str; 10] = [
    "What is the capital of France?",
    "Explain the difference between a stack and a queue.",
    "Write a haiku about programming.",
    "What are the first 10 prime numbers?",
    "Explain how a hash table works in simple terms.",
    "Write a short Go function that reverses a string.",
    "What causes a rainbow to appear?",
    "Compare TCP and UDP in three sentences.",
    "What is the time complexity of binary search and why?",
    "Describe the observer design pattern briefly.",
];
