//! The frames that carry history or names (`joined`, `history`,
//! `members`), kept under API Gateway's 32 KB frame limit by carrying fewer.

use shared::limits::SERVER_FRAME_MAX_BYTES;
use shared::{ChatMessage, HistoryEntry, ServerFrame};

use crate::pusher::Frame;

fn fits(frame: &Frame) -> bool {
    frame.len() <= SERVER_FRAME_MAX_BYTES
}

/// The largest `keep` in `lo..=hi` for which `fits(keep)`, where anything
/// that fits still fits with less (a binary search).
fn most_that_fit(mut lo: usize, mut hi: usize, fits: impl Fn(usize) -> bool) -> usize {
    while lo < hi {
        let keep = (lo + hi).div_ceil(2);
        if fits(keep) {
            lo = keep;
        } else {
            hi = keep - 1;
        }
    }
    lo
}

fn entries(messages: &[ChatMessage]) -> Vec<HistoryEntry> {
    messages
        .iter()
        .cloned()
        .map(HistoryEntry::Message)
        .collect()
}

/// The share of a `joined` frame its member list may take before it is cut
/// for history: in a room of thousands the newest messages matter more than
/// the thousandth name (`count` still tells how many there are).
const MEMBERS_BUDGET: usize = SERVER_FRAME_MAX_BYTES / 2;

/// Builds the `joined` frame with as much as fits. A member list beyond half
/// the frame is cut first; then the oldest history goes; and only if not
/// even one message fits beside them is the member list cut further.
/// `members[0]` is the joiner and is always kept. `more` says whether older
/// messages than `history` exist; it is set too when history was left out,
/// so a client knows to ask with `history` requests.
pub fn joined_frame(
    room: &str,
    name: &str,
    members: Vec<String>,
    history: Vec<ChatMessage>,
    more: bool,
) -> Frame {
    let count = members.len();
    let build = |members: &[String], history: &[ChatMessage], more: bool| {
        Frame::from(&ServerFrame::Joined {
            room: room.to_owned(),
            name: name.to_owned(),
            members: members.to_vec(),
            count,
            history: entries(history),
            more,
        })
    };

    let full = build(&members, &history, more);
    if fits(&full) {
        return full;
    }
    let newest = |keep: usize| &history[history.len() - keep..];
    let fits_with = |members: &[String], keep: usize| fits(&build(members, newest(keep), true));
    let members_within = |budget: usize| {
        most_that_fit(1, members.len(), |keep| {
            build(&members[..keep], &[], true).len() <= budget
        })
    };
    let mut kept_members = members_within(MEMBERS_BUDGET);
    if !history.is_empty() && !fits_with(&members[..kept_members], 1) {
        // The newest message alone is big (up to 24 KB escaped): room for it.
        kept_members = most_that_fit(1, kept_members, |keep| fits_with(&members[..keep], 1));
    }
    let members = &members[..kept_members];
    let keep = most_that_fit(0, history.len(), |keep| fits_with(members, keep));
    build(members, newest(keep), more || keep < history.len())
}

/// Builds the `history` frame for `messages` (oldest first): the newest
/// that fit, and `more` also when some had to stay out.
pub fn history_frame(room: &str, messages: Vec<ChatMessage>, more: bool) -> Frame {
    let build = |messages: &[ChatMessage], more: bool| {
        Frame::from(&ServerFrame::History {
            room: room.to_owned(),
            messages: entries(messages),
            more,
        })
    };
    let full = build(&messages, more);
    if fits(&full) {
        return full;
    }
    let newest = |keep: usize| &messages[messages.len() - keep..];
    let keep = most_that_fit(0, messages.len(), |keep| fits(&build(newest(keep), true)));
    build(newest(keep), true)
}

/// Builds the `members` frame for `members` (the asker first): as many
/// names as fit, with the count of all of them.
pub fn members_frame(room: &str, members: Vec<String>) -> Frame {
    let count = members.len();
    let build = |members: &[String]| {
        Frame::from(&ServerFrame::Members {
            room: room.to_owned(),
            members: members.to_vec(),
            count,
        })
    };
    let full = build(&members);
    if fits(&full) {
        return full;
    }
    let keep = most_that_fit(1, members.len(), |keep| fits(&build(&members[..keep])));
    build(&members[..keep])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(i: usize, data: &str) -> ChatMessage {
        ChatMessage {
            id: format!("{i:013}-0"),
            room: "r".into(),
            name: "n".into(),
            data: data.into(),
            ts: i as u64,
            nonce: None,
        }
    }

    fn parse(frame: &Frame) -> (Vec<String>, usize, Vec<ChatMessage>, bool) {
        match ServerFrame::parse(frame.as_str()).unwrap() {
            ServerFrame::Joined {
                members,
                count,
                history,
                more,
                ..
            } => (
                members,
                count,
                history
                    .into_iter()
                    .map(|HistoryEntry::Message(m)| m)
                    .collect(),
                more,
            ),
            other => panic!("not a joined frame: {other:?}"),
        }
    }

    #[test]
    fn small_frames_are_untouched() {
        let history: Vec<_> = (0..50).map(|i| message(i, "hello")).collect();
        let frame = joined_frame(
            "r",
            "me",
            vec!["me".into(), "you".into()],
            history.clone(),
            false,
        );
        assert_eq!(
            parse(&frame),
            (vec!["me".into(), "you".into()], 2, history, false)
        );
    }

    #[test]
    fn drops_the_oldest_history_first() {
        // 50 messages of 4096 control characters escape to ~24 KB each.
        let data = "\u{1}".repeat(4096);
        let history: Vec<_> = (0..50).map(|i| message(i, &data)).collect();
        let frame = joined_frame("r", "me", vec!["me".into()], history.clone(), false);
        assert!(frame.len() <= SERVER_FRAME_MAX_BYTES);
        let (_, _, kept, more) = parse(&frame);
        assert!(!kept.is_empty() && kept.len() < 50);
        assert_eq!(kept, history[50 - kept.len()..]);
        assert!(more, "what was left out can be asked for");
        // One more message would not have fitted.
        let one_more = joined_frame(
            "r",
            "me",
            vec!["me".into()],
            history[49 - kept.len()..].to_vec(),
            false,
        );
        assert_eq!(parse(&one_more).2.len(), kept.len());
    }

    #[test]
    fn a_history_page_keeps_the_newest_that_fit_and_says_more_remain() {
        let data = "\u{1}".repeat(2000);
        let messages: Vec<_> = (0..50).map(|i| message(i, &data)).collect();
        let frame = history_frame("r", messages.clone(), false);
        assert!(frame.len() <= SERVER_FRAME_MAX_BYTES);
        match ServerFrame::parse(frame.as_str()).unwrap() {
            ServerFrame::History {
                messages: kept,
                more,
                ..
            } => {
                let kept: Vec<_> = kept.into_iter().map(|HistoryEntry::Message(m)| m).collect();
                assert!(!kept.is_empty() && kept.len() < 50);
                assert_eq!(kept, messages[50 - kept.len()..]);
                assert!(more, "what stayed out is still to come");
            }
            other => panic!("not a history frame: {other:?}"),
        }
        // Two of them fit (about 12 KB each, escaped): nothing more to say.
        let small = history_frame("r", messages[..2].to_vec(), false);
        assert!(matches!(
            ServerFrame::parse(small.as_str()).unwrap(),
            ServerFrame::History { more: false, ref messages, .. } if messages.len() == 2
        ));
    }

    #[test]
    fn a_room_of_thousands_keeps_its_history_and_the_count() {
        let members: Vec<String> = std::iter::once("me".to_owned())
            .chain((0..10_000).map(|i| format!("member-with-a-long-name-{i:05}")))
            .collect();
        let history: Vec<_> = (0..50).map(|i| message(i, "a line of chat")).collect();
        let frame = joined_frame("r", "me", members.clone(), history.clone(), true);
        assert!(frame.len() <= SERVER_FRAME_MAX_BYTES);
        let (kept, count, kept_history, more) = parse(&frame);
        assert_eq!(count, 10_001);
        assert_eq!(kept[0], "me");
        assert!(kept.len() > 100 && kept.len() < 10_001);
        assert_eq!(kept, members[..kept.len()]);
        assert_eq!(kept_history, history, "history is not given up for names");
        assert!(more);

        // The newest message alone at its largest (24 KB escaped) still
        // gets its place, at the cost of more names.
        let big = vec![message(1, &"\u{1}".repeat(4096))];
        let frame = joined_frame("r", "me", members.clone(), big.clone(), false);
        assert!(frame.len() <= SERVER_FRAME_MAX_BYTES);
        let (kept, _, kept_history, more) = parse(&frame);
        assert_eq!(kept_history, big);
        assert!(!more);
        assert_eq!(kept[0], "me");
    }
}
