//! The ask callback: a job's proxy asks the operator's `network.ask_url` about a
//! target that neither list covers, and connects only on a yes.
//!
//! The root executor makes no outbound call of its own: it sends the question as a
//! [`Response::Ask`] frame on the job's connection, and the unprivileged frontend
//! makes the call and answers with a `Request::Answer` (routed here by
//! [`Answers::answer`]). Each `host:port` is asked at most once per job, both
//! answers kept; past `max_asks_per_job` questions the rest are refused unasked.
//! An answer opens the lists only: the port list and every address check still
//! apply (the caller checks them).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pysandbox_shared::{Ask, AskAnswer, AskOutcome, Response};
use tokio::sync::{mpsc, oneshot, OnceCell};
use tokio::time::Instant;
use tracing::{debug, info};

use super::policy::Refusal;
use super::target::{Host, Target};

/// How much longer than the callback's own timeout the proxy waits for the
/// frontend's answer, so that the frontend's word (timed out, failed) is the one
/// recorded; past it, a frontend that never answers counts as a timeout.
const ANSWER_GRACE: Duration = Duration::from_millis(500);

/// The `[network]` keys of the ask callback.
#[derive(Clone, PartialEq, Eq)]
pub struct AskSettings {
    /// Where the frontend POSTs each question: operator config, an http(s) URL.
    pub url: String,
    /// Sent as `Authorization: Bearer …` when set.
    pub token: Option<String>,
    /// How long one answer may take.
    pub timeout: Duration,
    /// Distinct `host:port` questions per job; later ones are refused unasked.
    pub max_per_job: u32,
}

impl fmt::Debug for AskSettings {
    /// Without the token: the config is logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AskSettings")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("max_per_job", &self.max_per_job)
            .finish()
    }
}

/// Questions of one job waiting for their answer, by id. The executor's server
/// fills in answers as the frontend sends them.
#[derive(Debug, Default)]
pub struct Answers {
    waiting: Mutex<HashMap<u32, oneshot::Sender<AskOutcome>>>,
}

impl Answers {
    /// Hands `answer` to the question it names. An answer to no question waiting
    /// (late, after its timeout, or made up) is dropped.
    pub fn answer(&self, answer: AskAnswer) {
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&answer.id);
        match waiting {
            Some(question) => {
                let _ = question.send(answer.outcome);
            }
            None => debug!(id = answer.id, "an answer to no waiting question; dropped"),
        }
    }

    /// Waits for the answer to `id` until the returned guard is dropped.
    fn expect(self: &Arc<Self>, id: u32) -> (Waiting, oneshot::Receiver<AskOutcome>) {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        let waiting = Waiting {
            answers: Arc::clone(self),
            id,
        };
        (waiting, rx)
    }
}

/// Removes a question that is no longer waited for, however the wait ended.
struct Waiting {
    answers: Arc<Answers>,
    id: u32,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.answers
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// How one job's questions reach its frontend: the job's frames, and where the
/// answers come back. The frames are held weakly, so that a proxy outliving its
/// job for a moment never keeps the job's connection from closing.
#[derive(Debug, Clone)]
pub struct AskLink {
    frames: mpsc::WeakSender<Response>,
    answers: Arc<Answers>,
}

impl AskLink {
    pub fn new(frames: &mpsc::Sender<Response>, answers: Arc<Answers>) -> AskLink {
        AskLink {
            frames: frames.downgrade(),
            answers,
        }
    }
}

/// The ask callback as one job's policy has it: the settings, and (once the job
/// is linked to its connection) how to ask.
#[derive(Debug, Clone)]
pub struct Asker {
    settings: Arc<AskSettings>,
    link: Option<AskLink>,
}

impl Asker {
    pub fn new(settings: AskSettings) -> Asker {
        Asker {
            settings: Arc::new(settings),
            link: None,
        }
    }

    /// The same callback, asked through `link`.
    pub fn linked(&self, link: AskLink) -> Asker {
        Asker {
            settings: Arc::clone(&self.settings),
            link: Some(link),
        }
    }
}

/// What the callback decided, or why it was not asked.
type Decision = Result<(), Refusal>;

/// A target's decision, shared by the requests for it that wait on one question.
type Pending = Arc<OnceCell<Decision>>;

/// One job's questions: asked once each, at most `max_per_job` of them.
#[derive(Debug)]
pub(super) struct JobAsks {
    asker: Asker,
    decided: Mutex<HashMap<(Host, u16), Pending>>,
    next_id: AtomicU32,
}

impl JobAsks {
    pub(super) fn new(asker: Asker) -> JobAsks {
        JobAsks {
            asker,
            decided: Mutex::default(),
            next_id: AtomicU32::new(1),
        }
    }

    /// The callback's word on `target`: asked the first time, remembered after.
    /// Requests for the same target made meanwhile wait for that one question.
    pub(super) async fn decide(&self, target: &Target, method: &str) -> Decision {
        let max = self.asker.settings.max_per_job;
        let cell = {
            let mut decided = self.decided.lock().unwrap_or_else(PoisonError::into_inner);
            let key = (target.host.clone(), target.port);
            match decided.get(&key) {
                Some(cell) => Arc::clone(cell),
                // The map holds every question asked: its size is the count.
                None if decided.len() >= max as usize => return Err(Refusal::AskLimit(max)),
                None => Arc::clone(decided.entry(key).or_default()),
            }
        };
        cell.get_or_init(|| self.ask(target, method)).await.clone()
    }

    async fn ask(&self, target: &Target, method: &str) -> Decision {
        let settings = &self.asker.settings;
        let started = Instant::now();
        let outcome = match &self.asker.link {
            Some(link) => self.ask_over(link, target, method).await,
            None => AskOutcome::Failed,
        };
        info!(
            host = %target.host,
            port = target.port,
            outcome = outcome.as_str(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            timeout_ms = settings.timeout.as_millis() as u64,
            "ask callback answered"
        );
        match outcome {
            AskOutcome::Allowed => Ok(()),
            AskOutcome::Refused => Err(Refusal::AskRefused),
            AskOutcome::Failed => Err(Refusal::AskFailed),
            AskOutcome::TimedOut => Err(Refusal::AskTimedOut(settings.timeout.as_millis() as u64)),
        }
    }

    async fn ask_over(&self, link: &AskLink, target: &Target, method: &str) -> AskOutcome {
        let settings = &self.asker.settings;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (_waiting, answer) = link.answers.expect(id);
        let question = Response::Ask(Ask {
            id,
            host: target.host.to_string(),
            port: target.port,
            method: method.to_owned(),
            url: settings.url.clone(),
            token: settings.token.clone(),
            timeout_ms: u32::try_from(settings.timeout.as_millis()).unwrap_or(u32::MAX),
        });
        let exchange = async {
            // The job's connection is gone once no strong sender is left.
            let frames = link.frames.upgrade()?;
            frames.send(question).await.ok()?;
            drop(frames);
            answer.await.ok()
        };
        // The wait counts against the job's wall-clock time (it goes on running)
        // but not its CPU time: nothing of the job runs for it.
        match tokio::time::timeout(settings.timeout + ANSWER_GRACE, exchange).await {
            Ok(Some(outcome)) => outcome,
            Ok(None) => AskOutcome::Failed,
            Err(_) => AskOutcome::TimedOut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_per_job: u32) -> AskSettings {
        AskSettings {
            url: "http://callback.test/ask".into(),
            token: Some("s3cret".into()),
            timeout: Duration::from_secs(5),
            max_per_job,
        }
    }

    fn target(text: &str) -> Target {
        Target::parse_authority(text, None).unwrap()
    }

    /// A frontend stand-in: answers each question with `answer(host)`, and counts.
    fn frontend(
        answer: fn(&str) -> Option<AskOutcome>,
    ) -> (
        AskLink,
        mpsc::Sender<Response>,
        tokio::task::JoinHandle<Vec<Ask>>,
    ) {
        let (frames, mut outgoing) = mpsc::channel(8);
        let answers = Arc::new(Answers::default());
        let link = AskLink::new(&frames, Arc::clone(&answers));
        let task = tokio::spawn(async move {
            let mut asked = Vec::new();
            while let Some(frame) = outgoing.recv().await {
                let Response::Ask(ask) = frame else {
                    panic!("not a question: {frame:?}")
                };
                if let Some(outcome) = answer(&ask.host) {
                    answers.answer(AskAnswer {
                        id: ask.id,
                        outcome,
                    });
                }
                asked.push(ask);
            }
            asked
        });
        (link, frames, task)
    }

    #[tokio::test]
    async fn each_target_is_asked_once_and_both_answers_are_kept() {
        let (link, frames, frontend) = frontend(|host| match host {
            "yes.test" => Some(AskOutcome::Allowed),
            _ => Some(AskOutcome::Refused),
        });
        let asks = JobAsks::new(Asker::new(settings(10)).linked(link));
        for _ in 0..3 {
            assert_eq!(asks.decide(&target("yes.test:80"), "GET").await, Ok(()));
            assert_eq!(
                asks.decide(&target("no.test:80"), "CONNECT").await,
                Err(Refusal::AskRefused)
            );
        }
        // Another port is another question.
        assert_eq!(asks.decide(&target("yes.test:443"), "GET").await, Ok(()));
        drop((asks, frames));
        let asked = frontend.await.unwrap();
        let seen: Vec<_> = asked
            .iter()
            .map(|a| (a.host.as_str(), a.port, a.method.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("yes.test", 80, "GET"),
                ("no.test", 80, "CONNECT"),
                ("yes.test", 443, "GET")
            ]
        );
        assert_eq!(asked[0].url, "http://callback.test/ask");
        assert_eq!(asked[0].token.as_deref(), Some("s3cret"));
        assert_eq!(asked[0].timeout_ms, 5000);
    }

    #[tokio::test]
    async fn past_the_limit_targets_are_refused_unasked() {
        let (link, frames, frontend) = frontend(|_| Some(AskOutcome::Allowed));
        let asks = JobAsks::new(Asker::new(settings(2)).linked(link));
        assert_eq!(asks.decide(&target("a.test:80"), "GET").await, Ok(()));
        assert_eq!(asks.decide(&target("b.test:80"), "GET").await, Ok(()));
        for _ in 0..2 {
            assert_eq!(
                asks.decide(&target("c.test:80"), "GET").await,
                Err(Refusal::AskLimit(2))
            );
        }
        // What was decided stays decided.
        assert_eq!(asks.decide(&target("a.test:80"), "GET").await, Ok(()));
        drop((asks, frames));
        assert_eq!(frontend.await.unwrap().len(), 2);
    }

    /// A frontend that never answers, and answers to questions nobody asked: the
    /// wait ends at the timeout, a refusal, and the made-up answers open nothing.
    #[tokio::test]
    async fn no_answer_is_a_timeout_and_stray_answers_open_nothing() {
        let (link, frames, frontend) = frontend(|_| None);
        let answers = Arc::clone(&link.answers);
        for id in [0, 2, u32::MAX] {
            answers.answer(AskAnswer {
                id,
                outcome: AskOutcome::Allowed,
            });
        }
        let quick = AskSettings {
            timeout: Duration::from_millis(10),
            ..settings(5)
        };
        let asks = JobAsks::new(Asker::new(quick).linked(link));
        assert_eq!(
            asks.decide(&target("slow.test:80"), "GET").await,
            Err(Refusal::AskTimedOut(10))
        );
        // The answer that comes too late is dropped, the refusal kept.
        answers.answer(AskAnswer {
            id: 1,
            outcome: AskOutcome::Allowed,
        });
        assert!(answers.waiting.lock().unwrap().is_empty());
        assert_eq!(
            asks.decide(&target("slow.test:80"), "GET").await,
            Err(Refusal::AskTimedOut(10))
        );
        drop((asks, frames));
        assert_eq!(frontend.await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_job_without_its_connection_is_refused() {
        let unlinked = JobAsks::new(Asker::new(settings(5)));
        assert_eq!(
            unlinked.decide(&target("a.test:80"), "GET").await,
            Err(Refusal::AskFailed)
        );
        let (frames, outgoing) = mpsc::channel(1);
        let link = AskLink::new(&frames, Arc::default());
        drop((frames, outgoing));
        let gone = JobAsks::new(Asker::new(settings(5)).linked(link));
        assert_eq!(
            gone.decide(&target("a.test:80"), "GET").await,
            Err(Refusal::AskFailed)
        );
    }

    #[test]
    fn the_token_is_not_in_debug_output() {
        assert!(!format!("{:?}", settings(1)).contains("s3cret"));
    }
}
