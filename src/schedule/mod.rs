//! Scheduling: the jobs (upgrade, keys, audit) that `run` and the daemon start when their cron
//! schedule is due; the schedules themselves are parsed config (`settings::cron`).

pub mod daemon;
