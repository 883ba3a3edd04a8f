//! The frames that carry history (`joined`, `history`), kept under API
//! Gateway's 32 KB frame limit by carrying fewer messages.

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

/// Builds the `joined` frame with as much as fits: the oldest history goes
/// first, and only if no history at all would fit is the member list cut
/// (`count` still tells the true number). `members[0]` is the joiner and is
/// always kept. A client gets what was cut with `history` requests.
pub fn joined_frame(
    room: &str,
    name: &str,
    members: Vec<String>,
    history: Vec<ChatMessage>,
) -> Frame {
    let count = members.len();
    let build = |members: &[String], history: &[ChatMessage]| {
        Frame::from(&ServerFrame::Joined {
            room: room.to_owned(),
            name: name.to_owned(),
            members: members.to_vec(),
            count,
            history: entries(history),
        })
    };

    let full = build(&members, &history);
    if fits(&full) {
        return full;
    }
    if fits(&build(&members, &[])) {
        let newest = |keep: usize| &history[history.len() - keep..];
        let keep = most_that_fit(0, history.len(), |keep| {
            fits(&build(&members, newest(keep)))
        });
        return build(&members, newest(keep));
    }
    let keep = most_that_fit(1, members.len(), |keep| fits(&build(&members[..keep], &[])));
    build(&members[..keep], &[])
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
        }
    }

    fn parse(frame: &Frame) -> (Vec<String>, usize, Vec<ChatMessage>) {
        match ServerFrame::parse(frame.as_str()).unwrap() {
            ServerFrame::Joined {
                members,
                count,
                history,
                ..
            } => (
                members,
                count,
                history
                    .into_iter()
                    .map(|HistoryEntry::Message(m)| m)
                    .collect(),
            ),
            other => panic!("not a joined frame: {other:?}"),
        }
    }

    #[test]
    fn small_frames_are_untouched() {
        let history: Vec<_> = (0..50).map(|i| message(i, "hello")).collect();
        let frame = joined_frame("r", "me", vec!["me".into(), "you".into()], history.clone());
        assert_eq!(parse(&frame), (vec!["me".into(), "you".into()], 2, history));
    }

    #[test]
    fn drops_the_oldest_history_first() {
        // 50 messages of 4096 control characters escape to ~24 KB each.
        let data = "\u{1}".repeat(4096);
        let history: Vec<_> = (0..50).map(|i| message(i, &data)).collect();
        let frame = joined_frame("r", "me", vec!["me".into()], history.clone());
        assert!(frame.len() <= SERVER_FRAME_MAX_BYTES);
        let (_, _, kept) = parse(&frame);
        assert!(!kept.is_empty() && kept.len() < 50);
        assert_eq!(kept, history[50 - kept.len()..]);
        // One more message would not have fitted.
        let one_more = joined_frame(
            "r",
            "me",
            vec!["me".into()],
            history[49 - kept.len()..].to_vec(),
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
    fn cuts_huge_member_lists_but_keeps_the_count_and_the_joiner() {
        let members: Vec<String> = std::iter::once("me".to_owned())
            .chain((0..10_000).map(|i| format!("member-with-a-long-name-{i:05}")))
            .collect();
        let frame = joined_frame("r", "me", members.clone(), vec![message(1, "hi")]);
        assert!(frame.len() <= SERVER_FRAME_MAX_BYTES);
        let (kept, count, history) = parse(&frame);
        assert_eq!(count, 10_001);
        assert_eq!(kept[0], "me");
        assert!(kept.len() > 1000 && kept.len() < 10_001);
        assert_eq!(kept, members[..kept.len()]);
        assert!(history.is_empty());
    }
}
