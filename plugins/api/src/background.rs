//! Background work for plugins: a runtime the gateway provides (one thread, alive for the whole
//! process, independent of request runtimes and configurations), and a bounded queue that drops
//! its oldest entries — counted in `portcullis_plugin_queue_dropped_total{plugin}` — rather than
//! growing without bound when its consumer (a log receiver, an exporter) is slow or down.
//!
//! Plugins flush their queues in [`crate::Plugin::flush`], which the gateway calls when a reload
//! retires an instance and on graceful shutdown.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The background runtime's handle.
pub fn handle() -> tokio::runtime::Handle {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portcullis-bg")
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            // Without a thread for background work nothing a plugin queues could ever be sent;
            // failing to start one is a broken host, not a configuration problem.
            #[allow(clippy::panic)]
            Err(e) => panic!("cannot start the background runtime: {e}"),
        }
    })
    .handle()
    .clone()
}

/// Runs `fut` on the background runtime.
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle().spawn(fut)
}

fn dropped_counter() -> &'static prometheus::IntCounterVec {
    static C: OnceLock<prometheus::IntCounterVec> = OnceLock::new();
    C.get_or_init(|| {
        let c = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "portcullis_plugin_queue_dropped_total",
                "Entries plugin queues dropped because they were full (oldest first)",
            ),
            &["plugin"],
        )
        .unwrap_or_else(|_| unreachable_counter());
        let _ = prometheus::default_registry().register(Box::new(c.clone()));
        c
    })
}

#[allow(clippy::panic)]
fn unreachable_counter() -> prometheus::IntCounterVec {
    // The metric name and labels are constants; `new` fails only for an invalid name.
    panic!("invalid metric definition")
}

/// A bounded FIFO with drop-oldest, shared between the request path (push, never blocks) and one
/// background consumer (waits for a batch).
pub struct Queue<T> {
    plugin: &'static str,
    max_entries: usize,
    items: Mutex<VecDeque<T>>,
    notify: tokio::sync::Notify,
    /// The length at which a push wakes the consumer: 1 while it waits for a first entry, the
    /// batch size while it coalesces, never while it is busy sending. A wake-up per push would
    /// cost the request path a cross-thread wake (a futex call and a context switch) every time.
    wake_at: AtomicUsize,
}

impl<T> Queue<T> {
    pub fn new(plugin: &'static str, max_entries: usize) -> Queue<T> {
        // Touch the metric so the family exists (at 0) before anything is dropped.
        dropped_counter().with_label_values(&[plugin]);
        Queue {
            plugin,
            max_entries: max_entries.max(1),
            items: Mutex::new(VecDeque::new()),
            notify: tokio::sync::Notify::new(),
            wake_at: AtomicUsize::new(1),
        }
    }

    /// Adds `item`; when full, the oldest entry is dropped and counted.
    pub fn push(&self, item: T) {
        let mut dropped = 0;
        let mut len = 0;
        if let Ok(mut q) = self.items.lock() {
            while q.len() >= self.max_entries {
                q.pop_front();
                dropped += 1;
            }
            q.push_back(item);
            len = q.len();
        }
        if dropped > 0 {
            dropped_counter()
                .with_label_values(&[self.plugin])
                .inc_by(dropped);
        }
        if len >= self.wake_at.load(Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.items.lock().map(|q| q.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes up to `max` entries now (possibly none).
    pub fn take(&self, max: usize) -> Vec<T> {
        match self.items.lock() {
            Ok(mut q) => {
                let n = q.len().min(max);
                q.drain(..n).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Waits until there is at least one entry, then up to `delay` more for the batch to fill
    /// to `max` (Kong's `max_coalescing_delay`), and takes it.
    pub async fn next_batch(&self, max: usize, delay: Duration) -> Vec<T> {
        // Set before looking at the queue: a push after the look sees it and wakes us.
        self.wake_at.store(1, Ordering::SeqCst);
        loop {
            if !self.is_empty() {
                break;
            }
            let notified = self.notify.notified();
            if !self.is_empty() {
                break;
            }
            notified.await;
        }
        if self.len() < max && !delay.is_zero() {
            self.wake_at.store(max.max(1), Ordering::SeqCst);
            let deadline = tokio::time::Instant::now() + delay;
            while self.len() < max {
                if tokio::time::timeout_at(deadline, self.notify.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        // Busy sending until the next call: pushes meanwhile need not wake anyone.
        self.wake_at.store(usize::MAX, Ordering::SeqCst);
        self.take(max)
    }

    /// Puts entries back at the front (a failed send to be retried), still bounded.
    pub fn requeue(&self, items: Vec<T>) {
        let mut dropped = 0u64;
        if let Ok(mut q) = self.items.lock() {
            for item in items.into_iter().rev() {
                if q.len() >= self.max_entries {
                    dropped += 1;
                    continue;
                }
                q.push_front(item);
            }
        }
        if dropped > 0 {
            dropped_counter()
                .with_label_values(&[self.plugin])
                .inc_by(dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_oldest_and_counts() {
        let q = Queue::new("test-queue", 3);
        for i in 0..5 {
            q.push(i);
        }
        assert_eq!(q.take(10), vec![2, 3, 4]);
        assert_eq!(
            dropped_counter().with_label_values(&["test-queue"]).get(),
            2
        );
    }

    #[test]
    fn batches_wait_for_entries() {
        let q = std::sync::Arc::new(Queue::new("test-batch", 100));
        let q2 = q.clone();
        let h = spawn(async move { q2.next_batch(2, Duration::from_millis(500)).await });
        q.push(1);
        q.push(2);
        let got = futures_lite_block_on(h);
        assert_eq!(got, vec![1, 2]);
    }

    /// Pushes do not wake the consumer one by one, but the push that fills a batch does: the
    /// batch goes out long before the coalescing delay.
    #[test]
    fn a_full_batch_is_taken_without_waiting_for_the_delay() {
        let q = std::sync::Arc::new(Queue::new("test-full-batch", 100));
        let q2 = q.clone();
        let h = spawn(async move { q2.next_batch(3, Duration::from_secs(3600)).await });
        for i in 1..=3 {
            q.push(i);
        }
        let got = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), h).await });
        assert_eq!(
            got.expect("the full batch, not the hour-long delay")
                .unwrap(),
            vec![1, 2, 3]
        );
    }

    fn futures_lite_block_on<T>(h: tokio::task::JoinHandle<T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(h)
            .unwrap()
    }
}
