//! What a run sends: the prompts (the reference's ten, or a file), cut to the first N,
//! repeated R times.

use crate::prompts::DEFAULT_PROMPTS;
use std::path::Path;

/// One request to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Position of the prompt in the prompt list.
    pub prompt_index: usize,
    /// Which repetition (0-based).
    pub round: usize,
    pub prompt: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("reading prompts from {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: no prompts (one per line; blank lines and lines starting with # are skipped)")]
    Empty(String),
    #[error("--limit 0 or --repeat 0 leaves nothing to run")]
    Nothing,
}

/// Prompts from a file: one per line, blank lines and `#` comments skipped.
pub fn read_prompts(path: &Path) -> Result<Vec<String>, WorkloadError> {
    let text = std::fs::read_to_string(path).map_err(|source| WorkloadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if prompts.is_empty() {
        return Err(WorkloadError::Empty(path.display().to_string()));
    }
    Ok(prompts)
}

pub fn default_prompts() -> Vec<String> {
    DEFAULT_PROMPTS.iter().map(|p| (*p).to_owned()).collect()
}

/// The jobs of one approach, in order: every prompt of round 0, then round 1, ...
pub fn jobs(
    prompts: &[String],
    limit: Option<usize>,
    repeat: usize,
) -> Result<Vec<Job>, WorkloadError> {
    let n = limit.unwrap_or(prompts.len()).min(prompts.len());
    if n == 0 || repeat == 0 {
        return Err(WorkloadError::Nothing);
    }
    Ok((0..repeat)
        .flat_map(|round| {
            prompts[..n].iter().enumerate().map(move |(i, p)| Job {
                prompt_index: i,
                round,
                prompt: p.clone(),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_and_repeat() {
        let p = default_prompts();
        let j = jobs(&p, Some(2), 3).unwrap();
        assert_eq!(j.len(), 6);
        assert_eq!((j[0].prompt_index, j[0].round), (0, 0));
        assert_eq!((j[3].prompt_index, j[3].round), (1, 1));
        assert_eq!(jobs(&p, Some(99), 1).unwrap().len(), 10);
        assert!(matches!(jobs(&p, Some(0), 1), Err(WorkloadError::Nothing)));
    }

    #[test]
    fn prompt_files() {
        let path = std::env::temp_dir().join(format!("tokenwire-prompts-{}", std::process::id()));
        std::fs::write(&path, "# mine\nfirst\n\n  second  \n").unwrap();
        assert_eq!(read_prompts(&path).unwrap(), vec!["first", "second"]);
        std::fs::write(&path, "# nothing\n\n").unwrap();
        assert!(matches!(read_prompts(&path), Err(WorkloadError::Empty(_))));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            read_prompts(&path),
            Err(WorkloadError::Read { .. })
        ));
    }
}
