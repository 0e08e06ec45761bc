//! Fair share of the fleet: which held tasks go to RabbitMQ next.
//!
//! RabbitMQ queues are FIFO, so whatever is published first is done first: a
//! big import that published all its tasks at once would make every import
//! behind it wait for the whole of it. Tasks are therefore recorded *held*
//! (migration 0015), and the scheduler releases them here, keeping at most
//! [`FairShare::import_tasks`] tasks of one kind of one import and
//! [`FairShare::workspace_tasks`] of one workspace released (queued or in a
//! worker's hands) at once. Releases go to the workspace with the fewest
//! tasks in flight first, and within it to the import with the fewest.
//!
//! The caps alone still let the queue grow deep (tens of tasks, while the
//! fleet has a few slots), and a task released now waits behind all of them.
//! So a pass also releases no more of a kind than its queue has room for
//! (the caller's `room`: the scheduler keeps a few ready messages per
//! consumer): the queue stays shallow, whoever comes next is released at the
//! next free place, and a newcomer waits for about one task of the others,
//! however many imports run and however large.
//!
//! A listing task keeps its slot while it pages on (the next page is the
//! same task) and hands it to its first sub-prefix task when it ends (see
//! `commit_page`); otherwise a slot frees when its task ends, which wakes the scheduler
//! (`tether_task_ended`) to release the next. One pass at a time holds an
//! advisory lock, so two schedulers never exceed a cap together.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use uuid::Uuid;

use super::{DbError, Store};
use crate::task::{TaskKind, TaskMessage};

/// An arbitrary constant: the advisory lock of a release pass.
const DISPATCH_LOCK: i64 = 0x7e7e_0015;

/// The settings of the fair share, per task kind (`TETHER_FAIR_IMPORT_TASKS`,
/// `TETHER_FAIR_WORKSPACE_TASKS`, `TETHER_FAIR_QUEUED_PER_CONSUMER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FairShare {
    /// Tasks of one kind of one import released at once.
    pub import_tasks: i64,
    /// Tasks of one kind of one workspace released at once.
    pub workspace_tasks: i64,
    /// Ready messages a task queue may hold per consumer; 0: no limit.
    pub queued_per_consumer: i64,
}

impl FairShare {
    /// The ready messages a task queue with `consumers` consumers may hold:
    /// `queued_per_consumer` each, one consumer's worth while none is
    /// connected (work waits for the fleet's return, not a flood); `None`
    /// without a limit.
    pub fn queue_depth(&self, consumers: u32) -> Option<i64> {
        (self.queued_per_consumer > 0).then(|| self.queued_per_consumer * i64::from(consumers.max(1)))
    }
}

/// One import's tasks of one kind, as a release pass sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    pub import_id: Uuid,
    pub workspace_id: String,
    pub kind: TaskKind,
    /// Released and not ended.
    pub in_flight: i64,
    /// Held, counted up to the import cap (more could not be released).
    pub held: i64,
}

/// Tasks held back and in flight for one workspace and kind (the gauges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceLoad {
    pub workspace_id: String,
    pub kind: TaskKind,
    pub held: i64,
    pub in_flight: i64,
}

/// How many tasks of each lane to release: the lanes come oldest import
/// first, which breaks ties. Each task goes to the workspace with the fewest
/// tasks of its kind in flight, and within it to the import with the fewest,
/// until every lane is empty or at a cap, or `room(kind)` tasks of the kind
/// are granted.
pub fn allocate(lanes: &[Lane], share: FairShare, room: impl Fn(TaskKind) -> i64) -> Vec<(usize, i64)> {
    let mut grants = vec![0_i64; lanes.len()];
    for kind in TaskKind::ALL {
        let mut queue_room = room(kind);
        // Workspaces of this kind in order of first appearance, with their lanes.
        let mut order: Vec<&str> = Vec::new();
        let mut by_workspace: HashMap<&str, (i64, Vec<usize>)> = HashMap::new();
        for (i, lane) in lanes.iter().enumerate().filter(|(_, l)| l.kind == kind) {
            let entry = by_workspace.entry(lane.workspace_id.as_str()).or_insert_with(|| {
                order.push(lane.workspace_id.as_str());
                (0, Vec::new())
            });
            entry.0 += lane.in_flight;
            entry.1.push(i);
        }
        let has_room = |i: usize, grants: &[i64]| {
            let lane = &lanes[i];
            lane.held > grants[i] && lane.in_flight + grants[i] < share.import_tasks
        };
        let mut heap: BinaryHeap<Reverse<(i64, usize)>> = order
            .iter()
            .enumerate()
            .filter(|(_, w)| by_workspace[*w].0 < share.workspace_tasks)
            .map(|(n, w)| Reverse((by_workspace[*w].0, n)))
            .collect();
        while queue_room > 0 {
            let Some(Reverse((in_flight, n))) = heap.pop() else { break };
            let lanes_of = &by_workspace[order[n]].1;
            let next = lanes_of
                .iter()
                .copied()
                .filter(|&i| has_room(i, &grants))
                .min_by_key(|&i| (lanes[i].in_flight + grants[i], i));
            let Some(i) = next else { continue };
            grants[i] += 1;
            queue_room -= 1;
            if in_flight + 1 < share.workspace_tasks {
                heap.push(Reverse((in_flight + 1, n)));
            }
        }
    }
    grants.into_iter().enumerate().filter(|(_, n)| *n > 0).collect()
}

impl Store {
    /// Releases held tasks within the fair share, at most `room(kind)` of a
    /// kind, and returns their messages, to publish. A crash before they are
    /// published loses nothing: they are re-published like any task whose
    /// message was lost.
    pub async fn release_tasks(
        &self,
        share: FairShare,
        room: impl Fn(TaskKind) -> i64,
    ) -> Result<Vec<(TaskKind, TaskMessage)>, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DISPATCH_LOCK]).await?;
        let lanes = lanes(&tx, share.import_tasks).await?;
        let grants = allocate(&lanes, share, room);
        if grants.is_empty() {
            return Ok(Vec::new());
        }
        let imports: Vec<Uuid> = grants.iter().map(|(i, _)| lanes[*i].import_id).collect();
        let kinds: Vec<&str> = grants.iter().map(|(i, _)| lanes[*i].kind.as_str()).collect();
        let counts: Vec<i64> = grants.iter().map(|(_, n)| *n).collect();
        let statement = tx
            .prepare_cached(
                "UPDATE tether.tasks SET held = false, published_at = now()
                 WHERE task_id IN (
                     SELECT h.task_id
                     FROM unnest($1::uuid[], $2::text[], $3::int8[]) AS g(import_id, kind, n),
                          LATERAL (SELECT t.task_id FROM tether.tasks t
                                   WHERE t.import_id = g.import_id AND t.kind = g.kind
                                     AND t.state = 'pending' AND t.held
                                   ORDER BY t.updated_at LIMIT g.n) h)
                   AND state = 'pending' AND held
                 RETURNING task_id, seq, kind",
            )
            .await?;
        let released = tx
            .query(&statement, &[&imports, &kinds, &counts])
            .await?
            .iter()
            .filter_map(|r| {
                Some((TaskKind::parse(r.get(2))?, TaskMessage { task_id: r.get(0), seq: r.get(1) }))
            })
            .collect();
        tx.commit().await?;
        Ok(released)
    }

    /// Tasks held back and in flight per workspace and kind, for imports
    /// that are not final.
    pub async fn workspace_loads(&self) -> Result<Vec<WorkspaceLoad>, DbError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT i.workspace_id, t.kind, count(*) FILTER (WHERE t.held),
                        count(*) FILTER (WHERE NOT t.held)
                 FROM tether.tasks t JOIN tether.imports i USING (import_id)
                 WHERE t.state = 'pending' AND i.workspace_id IS NOT NULL
                 GROUP BY 1, 2 ORDER BY 1, 2",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(WorkspaceLoad {
                    workspace_id: r.get(0),
                    kind: TaskKind::parse(r.get(1))?,
                    held: r.get(2),
                    in_flight: r.get(3),
                })
            })
            .collect())
    }
}

/// The lanes of every import that is not final, oldest import first.
async fn lanes(tx: &deadpool_postgres::Transaction<'_>, cap: i64) -> Result<Vec<Lane>, DbError> {
    let statement = tx
        .prepare_cached(
            "SELECT i.import_id, i.workspace_id, k.kind,
                    (SELECT count(*) FROM tether.tasks t
                     WHERE t.import_id = i.import_id AND t.kind = k.kind
                       AND t.state = 'pending' AND NOT t.held),
                    (SELECT count(*) FROM (SELECT 1 FROM tether.tasks t
                                           WHERE t.import_id = i.import_id AND t.kind = k.kind
                                             AND t.state = 'pending' AND t.held LIMIT $1) h)
             FROM tether.imports i CROSS JOIN (VALUES ('list'), ('copy')) AS k(kind)
             WHERE i.state IN ('queued', 'running') AND i.workspace_id IS NOT NULL
             ORDER BY i.created_at, i.import_id, k.kind",
        )
        .await?;
    Ok(tx
        .query(&statement, &[&cap])
        .await?
        .iter()
        .filter_map(|r| {
            Some(Lane {
                import_id: r.get(0),
                workspace_id: r.get(1),
                kind: TaskKind::parse(r.get(2))?,
                in_flight: r.get(3),
                held: r.get(4),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(workspace: &str, n: u128, kind: TaskKind, in_flight: i64, held: i64) -> Lane {
        Lane { import_id: Uuid::from_u128(n), workspace_id: workspace.into(), kind, in_flight, held }
    }

    const SHARE: FairShare = FairShare { import_tasks: 4, workspace_tasks: 6, queued_per_consumer: 2 };

    fn unlimited(_: TaskKind) -> i64 {
        i64::MAX
    }

    #[test]
    fn a_lone_import_gets_its_cap() {
        let lanes = [lane("a", 1, TaskKind::Copy, 0, 100)];
        assert_eq!(allocate(&lanes, SHARE, unlimited), vec![(0, 4)]);
    }

    #[test]
    fn a_newcomer_gets_its_share_while_the_big_import_is_full() {
        let lanes = [lane("a", 1, TaskKind::Copy, 4, 5000), lane("b", 2, TaskKind::Copy, 0, 1)];
        assert_eq!(allocate(&lanes, SHARE, unlimited), vec![(1, 1)]);
    }

    #[test]
    fn the_workspace_cap_is_shared_by_its_imports_fewest_in_flight_first() {
        let lanes = [
            lane("a", 1, TaskKind::List, 2, 100),
            lane("a", 2, TaskKind::List, 0, 100),
            lane("a", 3, TaskKind::List, 0, 100),
        ];
        // 6 - 2 = 4 free in the workspace: the two empty imports first.
        assert_eq!(allocate(&lanes, SHARE, unlimited), vec![(1, 2), (2, 2)]);
    }

    #[test]
    fn workspaces_are_served_fewest_in_flight_first_and_kinds_apart() {
        let lanes = [
            lane("a", 1, TaskKind::List, 3, 100),
            lane("a", 1, TaskKind::Copy, 0, 2),
            lane("b", 2, TaskKind::List, 0, 100),
            lane("c", 3, TaskKind::List, 4, 0),
        ];
        assert_eq!(allocate(&lanes, SHARE, unlimited), vec![(0, 1), (1, 2), (2, 4)]);
    }

    #[test]
    fn nothing_is_released_past_a_cap() {
        let lanes = [lane("a", 1, TaskKind::Copy, 4, 10), lane("a", 2, TaskKind::Copy, 2, 10)];
        assert_eq!(allocate(&lanes, SHARE, unlimited), Vec::<(usize, i64)>::new());
    }

    #[test]
    fn a_shallow_queue_goes_to_the_newcomer_first() {
        let lanes = [lane("a", 1, TaskKind::Copy, 2, 5000), lane("b", 2, TaskKind::Copy, 0, 10)];
        // One place in the queue: the import with nothing in flight takes it.
        assert_eq!(allocate(&lanes, SHARE, |_| 1), vec![(1, 1)]);
        // Three: then round-robin, the big import's turn at equal counts.
        assert_eq!(allocate(&lanes, SHARE, |_| 3), vec![(0, 1), (1, 2)]);
    }

    #[test]
    fn each_kind_has_its_own_room_and_none_releases_nothing() {
        let lanes = [lane("a", 1, TaskKind::List, 0, 100), lane("a", 1, TaskKind::Copy, 0, 100)];
        let room = |kind| if kind == TaskKind::List { 2 } else { 0 };
        assert_eq!(allocate(&lanes, SHARE, room), vec![(0, 2)]);
        // The caps stay upper bounds whatever the room.
        assert_eq!(allocate(&lanes, SHARE, |_| 100), vec![(0, 4), (1, 4)]);
    }

    #[test]
    fn the_queue_depth_follows_the_consumers() {
        assert_eq!(SHARE.queue_depth(3), Some(6));
        assert_eq!(SHARE.queue_depth(0), Some(2));
        assert_eq!(FairShare { queued_per_consumer: 0, ..SHARE }.queue_depth(3), None);
    }
}
